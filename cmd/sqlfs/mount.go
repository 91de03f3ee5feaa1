package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/superfly/ltx"
	"golang.org/x/sys/unix"

	sqlfuse "github.com/sqlfs/sqlfs/fuse"
	"github.com/sqlfs/sqlfs/pager"
	"github.com/sqlfs/sqlfs/ship"
)

const defaultDataDir = "/var/lib/sqlfs"

// dataDir is the layout of a mount's data directory.
type dataDir struct{ path string }

func (d dataDir) root() string  { return filepath.Join(d.path, "root") }  // backing files
func (d dataDir) ltx() string   { return filepath.Join(d.path, "ltx") }   // local history (a file replica)
func (d dataDir) state() string { return filepath.Join(d.path, "state") } // page checksums saved at unmount

func runMount(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fset := newFlagSet("mount", stderr)
	data := fset.String("data", defaultDataDir, "data directory: backing files and local history")
	verbose := fset.Bool("v", false, "log every capture event (debug)")
	fuseDebug := fset.Bool("fuse-debug", false, "log every FUSE request")
	cpuProfile := fset.String("cpuprofile", "", "write a CPU profile to this file until unmount")
	replicaURL := fset.String("replica", "", "ship every commit to this replica (`URL`: s3://bucket/prefix or file:///dir)")
	syncReplica := fset.Bool("sync-replica", false, "an fsync returns only once the replica has every commit up to it (RPO 0)")
	syncTimeout := fset.Duration("sync-timeout", 10*time.Second, "with -sync-replica, how long an fsync waits for the replica before failing with EIO")
	walCapture := fset.String("wal-capture", "watch", "how WAL commits are captured: `watch` (the kernel writes the WAL directly, sqlfs reads each commit back at once and holds checkpoints until it has) or intercept (every WAL write passes through sqlfs)")
	shutdownTimeout := fset.Duration("shutdown-timeout", 10*time.Second, "at unmount, how long to wait for pending uploads")
	restoreIfMissing := fset.Bool("restore-if-missing", false, "first restore every database of the replica that the data dir lacks; its history continues")
	execCmd := fset.String("exec", "", "once mounted, run `CMD` with sh -c; stop when it exits, with its exit code")
	mountPoint := fset.String("mount-point", "", "mount at `DIR` (the same as giving MOUNTPOINT as an argument)")
	atTXID := fset.String("at-txid", "", "mount read-only the database as of `TXID` (hex, as sqlfs ltx prints it); see histmount.go")
	atTime := fset.String("at-time", "", "mount read-only the databases as of `TIME` (RFC 3339): the last commit at or before it")
	dbName := fset.String("db", "", "with -at-txid or -at-time: the database `NAME` in the data dir or replica")
	pageCacheMiB := fset.Int64("page-cache-mib", 2048, "with -at-txid or -at-time from an s3:// replica: keep at most `MIB` MiB of fetched pages on disk")
	var shipOpt ship.Options
	fset.IntVar(&shipOpt.MaxBacklog, "max-backlog", 1000, "merge the commits waiting for the replica into one LTX file once more than `N` wait, or sooner when they clearly arrive faster than one-commit uploads carry them (0: never)")
	fset.DurationVar(&shipOpt.MaxLag, "max-lag", 0, "merge the commits waiting for the replica once the oldest has waited this long (0: never)")
	fset.Float64Var(&shipOpt.MaxPutRate, "max-put-rate", 0, "at most `N` uploads a second; commits that wait for one go up merged (0: no limit)")
	levelFlags := addLevelFlags(fset)
	if err := parseFlags(fset, args, stdout); err != nil {
		return err
	}
	if *atTXID != "" || *atTime != "" {
		return runHistMount(ctx, histMount{fset: fset, atTXID: *atTXID, atTime: *atTime, data: *data,
			replica: *replicaURL, db: *dbName, verbose: *verbose, debug: *fuseDebug, pageCacheMiB: *pageCacheMiB, cpuProfile: *cpuProfile}, stderr)
	}
	levels, err := levelFlags.levels()
	if err != nil {
		return err
	}
	if fset.NArg() == 1 {
		*mountPoint = fset.Arg(0)
	} else if fset.NArg() > 1 || *mountPoint == "" {
		return usagef("want exactly one mount point, got %d arguments", fset.NArg())
	}
	if *walCapture != "watch" && *walCapture != "intercept" {
		return usagef("-wal-capture must be watch or intercept, not %q", *walCapture)
	}
	watch := *walCapture == "watch"
	if *restoreIfMissing && *replicaURL == "" {
		return usagef("-restore-if-missing needs -replica")
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	mnt, err := filepath.Abs(*mountPoint)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(*data)
	if err != nil {
		return err
	}
	if err := checkMountPoint(mnt, log); err != nil {
		return err
	}
	dd := dataDir{dir}
	unlock, err := prepareDataDir(dd)
	if err != nil {
		return err
	}
	defer unlock()

	store := ship.OpenStore(dd.ltx(), log)
	defer store.Close()
	if *syncReplica && *replicaURL == "" {
		return usagef("-sync-replica needs -replica")
	}
	if *replicaURL != "" {
		if err := seedFromReplica(ctx, dd, store, *replicaURL, *restoreIfMissing, log); err != nil {
			return err
		}
	}
	var rep *replication
	if *replicaURL != "" {
		c := replicaConfig{url: *replicaURL, sync: *syncReplica, syncTimeout: *syncTimeout, opt: shipOpt}
		if rep, err = startReplication(ctx, c, dd, store, log); err != nil {
			return err
		}
		defer rep.stop(*shutdownTimeout, log)
	}
	lev := startLeveling(levels, store, rep, log)
	defer lev.stop()
	openDB := func(name string) (*pager.DB, error) {
		return openCapture(dd, store, rep, name, watch, log)
	}
	live := sqlfuse.NewLive(dd.root(), openDB)
	defer closeCaptures(live, dd, log)

	// Bring every known database's history up to date before anyone can
	// write: snapshots for new ones, commits left in a WAL by a crash.
	names, err := knownDatabases(ctx, dd, store)
	if err != nil {
		return err
	}
	for _, name := range names {
		db, err := openDB(name)
		if err != nil {
			return err
		}
		live.Add(db)
		lev.add(name)
		if rep != nil {
			if err := rep.up.Start(ctx, name, db.Pos().TXID); err != nil {
				return err
			}
		}
	}

	if watch {
		stop, err := live.WatchWAL(log)
		if err != nil {
			return err
		}
		defer stop()
	}
	root, err := live.Root()
	if err != nil {
		return err
	}
	server, err := sqlfuse.Mount(mnt, root, dd.root(), *fuseDebug)
	if err != nil {
		return fmt.Errorf("mount %s: %v", mnt, err)
	}
	log.Info("mounted", "mountpoint", mnt, "data", dir, "databases", len(names))
	if *execCmd != "" {
		done := make(chan struct{})
		go func() { server.Wait(); close(done) }()
		return runApp(*execCmd, server, mnt, done, stdout, stderr, log)
	}
	serve(ctx, server, mnt, log)
	return nil
}

// serve returns once the mount is gone: unmounted from outside, or by us
// when ctx ends (SIGINT, SIGTERM).
func serve(ctx context.Context, server *fuse.Server, mnt string, log *slog.Logger) {
	done := make(chan struct{})
	go func() { server.Wait(); close(done) }()
	select {
	case <-done:
		log.Info("unmounted from outside", "mountpoint", mnt)
	case <-ctx.Done():
		unmount(server, mnt, done, log)
	}
}

// unmount takes the mount down, waiting a while for applications to close
// their files before detaching it.
func unmount(server interface{ Unmount() error }, mnt string, done <-chan struct{}, log *slog.Logger) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := server.Unmount()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			log.Warn("mount still busy; detaching it", "mountpoint", mnt, "err", err)
			unix.Unmount(mnt, unix.MNT_DETACH)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		log.Warn("FUSE server did not stop in time", "mountpoint", mnt)
	}
	log.Info("unmounted", "mountpoint", mnt)
}

// checkMountPoint accepts an existing directory that is not mounted, and
// clears a mount left behind by a sqlfs process that died.
func checkMountPoint(mnt string, log *slog.Logger) error {
	mounted, fstype := mountedAt(mnt)
	if mounted {
		// statfs always reaches the FUSE server (stat may be answered from
		// cached attributes), so it tells a dead server from a live one.
		var st unix.Statfs_t
		err := unix.Statfs(mnt, &st)
		if errors.Is(err, syscall.ENOTCONN) && strings.HasPrefix(fstype, "fuse") {
			log.Warn("clearing stale mount left by a previous sqlfs", "mountpoint", mnt)
			if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("mount point %s: clearing stale mount: %v", mnt, err)
			}
		} else {
			return fmt.Errorf("mount point %s is busy: something (%s) is already mounted there", mnt, fstype)
		}
	}
	fi, err := os.Stat(mnt)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("mount point %s does not exist", mnt)
	} else if err != nil {
		return fmt.Errorf("mount point %s: %v", mnt, err)
	} else if !fi.IsDir() {
		return fmt.Errorf("mount point %s is not a directory", mnt)
	}
	return nil
}

// mountedAt reports whether something is mounted exactly at dir, and its type.
func mountedAt(dir string) (bool, string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || unescapeMount(f[4]) != dir {
			continue
		}
		for i, x := range f {
			if x == "-" && i+1 < len(f) {
				return true, f[i+1]
			}
		}
		return true, ""
	}
	return false, ""
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// prepareDataDir creates the layout, checks it is writable and takes the
// data dir's lock so that two mounts cannot capture the same files.
func prepareDataDir(dd dataDir) (unlock func(), err error) {
	for _, d := range []string{dd.root(), dd.ltx(), dd.state()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("data dir %s: %v", dd.path, unwrapPathError(err))
		}
	}
	probe, err := os.CreateTemp(dd.ltx(), ".probe-*")
	if err != nil {
		return nil, fmt.Errorf("data dir %s is not writable: %v", dd.path, unwrapPathError(err))
	}
	probe.Close()
	os.Remove(probe.Name())

	lf, err := os.OpenFile(filepath.Join(dd.path, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("data dir %s: %v", dd.path, unwrapPathError(err))
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		return nil, fmt.Errorf("data dir %s is in use by another sqlfs mount", dd.path)
	}
	return func() { lf.Close() }, nil
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// knownDatabases lists the databases to start capture for at mount: every
// SQLite file in the root and every database with history.
func knownDatabases(ctx context.Context, dd dataDir, store *ship.Store) ([]string, error) {
	seen := map[string]bool{}
	var names []string
	ents, err := os.ReadDir(dd.root())
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || !isSQLiteFile(filepath.Join(dd.root(), e.Name())) {
			continue
		}
		seen[e.Name()] = true
		names = append(names, e.Name())
	}
	hist, err := store.Databases(ctx)
	if err != nil {
		return nil, fmt.Errorf("list history: %w", err)
	}
	for _, name := range hist {
		if !seen[name] {
			names = append(names, name)
		}
	}
	return names, nil
}

func isSQLiteFile(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, pager.DBHeaderSize)
	if _, err := io.ReadFull(f, b); err != nil {
		return false
	}
	return pager.IsDBHeader(b)
}

// openCapture starts capture of one database at the end of its history.
func openCapture(dd dataDir, store *ship.Store, rep *replication, name string, watch bool, log *slog.Logger) (*pager.DB, error) {
	ctx := context.Background()
	if err := store.RemoveTemp(name); err != nil {
		return nil, err
	}
	if err := store.Recover(name); err != nil {
		return nil, fmt.Errorf("history of %s: %w", name, err)
	}
	last, err := lastFile(ctx, store, name)
	if err != nil {
		return nil, err
	}
	return pager.Open(pager.Config{
		Name:      name,
		Path:      filepath.Join(dd.root(), name),
		Sink:      storeSink{store: store, rep: rep, db: name},
		Log:       log,
		Last:      last,
		StatePath: filepath.Join(dd.state(), name),
		Watch:     watch,
	})
}

// lastFile reads the header and trailer of the newest level-0 LTX file.
func lastFile(ctx context.Context, store *ship.Store, name string) (*pager.LastFile, error) {
	files, err := store.LTXFiles(ctx, name, 0)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", name, err)
	}
	if len(files) == 0 {
		return nil, nil
	}
	info := files[len(files)-1]
	path := filepath.Join(store.Root, ship.LTXPath(name, 0, info.MinTXID, info.MaxTXID))
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var last pager.LastFile
	hb := make([]byte, ltx.HeaderSize)
	tb := make([]byte, ltx.TrailerSize)
	if _, err := f.ReadAt(hb, 0); err != nil {
		return nil, fmt.Errorf("history file %s: %v", path, err)
	}
	if _, err := f.ReadAt(tb, info.Size-ltx.TrailerSize); err != nil {
		return nil, fmt.Errorf("history file %s: %v", path, err)
	}
	if err := last.Header.UnmarshalBinary(hb); err != nil {
		return nil, fmt.Errorf("history file %s is corrupt: %v", path, err)
	}
	if err := last.Trailer.UnmarshalBinary(tb); err != nil {
		return nil, fmt.Errorf("history file %s is corrupt: %v", path, err)
	}
	if err := last.Header.Validate(); err != nil {
		return nil, fmt.Errorf("history file %s is corrupt: %v", path, err)
	}
	if err := last.Trailer.Validate(last.Header); err != nil {
		return nil, fmt.Errorf("history file %s is corrupt: %v", path, err)
	}
	return &last, nil
}

// closeCaptures saves each database's page checksums for the next mount.
func closeCaptures(live *sqlfuse.Live, dd dataDir, log *slog.Logger) {
	for _, db := range live.DBs() {
		if err := db.Close(filepath.Join(dd.state(), db.Name())); err != nil {
			log.Warn("saving page checksums", "db", db.Name(), "err", err)
		}
	}
}
