package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/superfly/ltx"

	sqlfuse "github.com/sqlfs/sqlfs/fuse"
	"github.com/sqlfs/sqlfs/restore"
	"github.com/sqlfs/sqlfs/ship"
)

// histMount is a historical mount as the command line asked for it:
//
//	sqlfs mount (-at-txid TXID | -at-time RFC3339) (-data DIR | -replica URL) [-db NAME] MOUNTPOINT
type histMount struct {
	fset           *flag.FlagSet // the mount's flags, to tell -data given from its default
	atTXID, atTime string
	data, replica  string
	db             string
	verbose, debug bool
	pageCacheMiB   int64  // bound of the disk cache of pages from S3
	cpuProfile     string // write a CPU profile here until unmount
}

// runHistMount mounts past states of databases read-only and serves them
// until SIGINT, SIGTERM or umount. Everything that can be wrong is checked
// before anything is mounted: the mount point, the flags, the history, and
// the page index of every file the mount will read.
func runHistMount(ctx context.Context, hm histMount, stderr io.Writer) error {
	if hm.atTXID != "" && hm.atTime != "" {
		return usagef("give -at-txid or -at-time, not both")
	}
	if hm.fset.NArg() != 1 {
		return usagef("want exactly one mount point, got %d arguments", hm.fset.NArg())
	}
	level := slog.LevelInfo
	if hm.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if hm.cpuProfile != "" {
		f, err := os.Create(hm.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	var txid ltx.TXID
	var at time.Time
	var err error
	if hm.atTXID != "" {
		if txid, err = parseTXID(hm.atTXID); err != nil {
			return usagef("-at-txid %s: not a hex TXID like 000000000000002a", hm.atTXID)
		} else if txid == 0 {
			return usagef("-at-txid %s: TXIDs start at 1", hm.atTXID)
		}
	} else if at, err = time.Parse(time.RFC3339Nano, hm.atTime); err != nil {
		return usagef("-at-time %s: not an RFC 3339 time like 2024-01-15T09:00:00Z", hm.atTime)
	}
	if hm.pageCacheMiB <= 0 {
		return usagef("-page-cache-mib %d: give a positive number of MiB", hm.pageCacheMiB)
	}
	mnt, err := filepath.Abs(hm.fset.Arg(0))
	if err != nil {
		return err
	}
	if err := checkMountPoint(mnt, log); err != nil {
		return err
	}
	hf := &historyFlags{data: hm.data, db: hm.db, replica: hm.replica}
	h, err := hf.resolve(hm.fset, nil)
	if err != nil {
		return err
	}

	start := time.Now()
	opt := restore.PageSourceOptions{Rollback: true, Log: log, ReplicaID: h.where, CacheBytes: hm.pageCacheMiB << 20}
	if _, ok := h.replica.(*ship.S3Replica); ok {
		opt.CacheDir = pageCacheDir()
	}
	srcs, err := openHistory(ctx, h, txid, at, opt, log)
	mounted := false
	defer func() {
		for name, src := range srcs {
			if mounted {
				st := src.Stats()
				log.Info("read from history", "db", name, "index_bytes", st.IndexBytes, "page_bytes", st.PageBytes, "requests", st.Requests)
			}
			src.Close()
		}
	}()
	if err != nil {
		return err
	}

	server, err := sqlfuse.MountHist(mnt, sqlfuse.NewHist(srcs, log), h.where, hm.debug)
	if err != nil {
		return fmt.Errorf("mount %s: %v", mnt, err)
	}
	mounted = true
	for name, src := range srcs {
		log.Info("mounted read-only", "mountpoint", mnt, "db", name, "txid", src.TXID(),
			"committed", ltx.FormatTimestamp(src.Time()), "bytes", src.Size(), "files", src.FilesRead(),
			"index_bytes", src.Stats().IndexBytes)
	}
	log.Info("mounted", "mountpoint", mnt, "history", h.where, "databases", len(srcs), "open_seconds", time.Since(start).Seconds())
	serve(ctx, server, mnt, log)
	return nil
}

// openHistory opens a page source for each database the mount shows: the
// one named (or the only one) at txid, or at time at every database that
// has a commit by then (just the one named with -db).
func openHistory(ctx context.Context, h *history, txid ltx.TXID, at time.Time, opt restore.PageSourceOptions, log *slog.Logger) (map[string]*restore.PageSource, error) {
	names := []string{h.db}
	switch {
	case h.db != "":
	case !at.IsZero():
		dbs, err := h.replica.Databases(ctx)
		if err != nil {
			return nil, fmt.Errorf("list databases in %s: %w", h.where, err)
		} else if len(dbs) == 0 {
			return nil, fmt.Errorf("no database history in %s", h.where)
		}
		names = dbs
	default:
		if err := h.pickOnlyDatabase(ctx); err != nil {
			return nil, err
		}
		names = []string{h.db}
	}

	srcs := map[string]*restore.PageSource{}
	var tooEarly error
	for _, name := range names {
		target := txid
		if !at.IsZero() {
			var err error
			target, err = restore.TXIDAt(ctx, h.replica, name, at)
			if errors.Is(err, restore.ErrBeforeHistory) && len(names) > 1 {
				tooEarly = err // not born yet: left out
				log.Info("no commit by then; not shown", "db", name, "err", err)
				continue
			}
			if err != nil {
				return srcs, historyError(ctx, h, name, err)
			}
		}
		src, err := restore.OpenPageSource(ctx, h.replica, name, target, opt)
		if err != nil {
			return srcs, historyError(ctx, h, name, err)
		}
		srcs[name] = src
	}
	if len(srcs) == 0 {
		return nil, fmt.Errorf("no database in %s has a commit at or before %s: %w", h.where, ltx.FormatTimestamp(at.UTC()), tooEarly)
	}
	return srcs, nil
}

// historyError explains a database the replica does not have; other errors
// already name what is wrong.
func historyError(ctx context.Context, h *history, name string, err error) error {
	if errors.Is(err, restore.ErrNoHistory) {
		h.db = name
		return h.noHistory(ctx)
	}
	return err
}

// pageCacheDir is where pages fetched from remote replicas are kept:
// $XDG_CACHE_HOME/sqlfs/pages, else ~/.cache/sqlfs/pages.
func pageCacheDir() string {
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "sqlfs", "pages")
}
