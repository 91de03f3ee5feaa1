package main

// Seeding a data dir from its replica, so that a mount on a new server
// continues the replica's history instead of starting one of its own.
//
// Invariant: a database file in DIR/root with no local history gets local
// history only as a complete copy of the replica's level-0 files, and only
// when the file holds exactly the replica's latest state; the copy is
// downloaded into DIR/seeding and renamed into DIR/ltx in one step, so a
// crash leaves either no local history (and the next mount seeds again) or
// all of it. Capture then opens at the replica's last TXID with its
// post-apply checksum, and the uploader finds the replica at the same
// position.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/superfly/ltx"

	"github.com/sqlfs/sqlfs/restore"
	"github.com/sqlfs/sqlfs/ship"
)

func (d dataDir) seeding() string { return filepath.Join(d.path, "seeding") } // history being copied in

// seedFromReplica prepares a data dir for a mount with a replica: with
// restoreIfMissing, the databases only the replica has are restored; then
// every database file without local history that holds the replica's latest
// state (restored now, or by sqlfs restore before the mount) takes the
// replica's history, so its TXIDs continue.
func seedFromReplica(ctx context.Context, dd dataDir, store *ship.Store, url string, restoreIfMissing bool, log *slog.Logger) error {
	replica, err := ship.OpenReplica(ctx, url)
	if err != nil {
		return err
	}
	if restoreIfMissing {
		if err := restoreMissing(ctx, dd, replica, restore.DefaultParallelism, log); err != nil {
			return err
		}
	}
	return seedHistories(ctx, dd, store, replica, restore.DefaultParallelism, log)
}

// restoreMissing restores every database of the replica that the data dir
// has neither as a file nor as history into DIR/root, at its latest TXID.
func restoreMissing(ctx context.Context, dd dataDir, replica ship.ReplicaClient, parallelism int, log *slog.Logger) error {
	dbs, err := replica.Databases(ctx)
	if err != nil {
		return fmt.Errorf("restore-if-missing: list %s: %w", replica, err)
	}
	for _, name := range dbs {
		if exists(filepath.Join(dd.root(), name)) || exists(filepath.Join(dd.ltx(), name)) {
			continue
		}
		start := time.Now()
		res, err := restore.Restore(ctx, replica, name, restore.Options{Output: filepath.Join(dd.root(), name), Parallelism: parallelism})
		if errors.Is(err, restore.ErrNoHistory) {
			continue
		} else if err != nil {
			return fmt.Errorf("restore-if-missing: %s from %s: %w", name, replica, err)
		}
		log.Info("restored from the replica", "db", name, "txid", res.TXID, "bytes", res.Bytes, "seconds", time.Since(start).Seconds())
	}
	return nil
}

// seedHistories gives each SQLite file in DIR/root that has no local history
// the replica's history, when the file is the replica's latest state (it
// was just restored from it). Other files are left to capture, which
// records them as a new history.
func seedHistories(ctx context.Context, dd dataDir, store *ship.Store, replica ship.ReplicaClient, parallelism int, log *slog.Logger) error {
	if err := os.RemoveAll(dd.seeding()); err != nil {
		return fmt.Errorf("data dir %s: %v", dd.path, unwrapPathError(err))
	}
	ents, err := os.ReadDir(dd.root())
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(dd.root(), name)
		if !e.Type().IsRegular() || !isSQLiteFile(path) || exists(filepath.Join(dd.ltx(), name)) {
			continue
		}
		files, err := replica.LTXFiles(ctx, name, 0)
		if err != nil {
			return fmt.Errorf("replica %s: list %s: %w", replica, name, err)
		}
		if len(files) == 0 {
			continue
		}
		same, err := isLatestState(ctx, replica, name, files[len(files)-1], path)
		if err != nil {
			return err
		}
		if !same {
			log.Warn("database has no local history and differs from the replica's; it starts a new history", "db", name, "replica", replica.String())
			continue
		}
		if err := seedHistory(ctx, dd, store, replica, name, files, parallelism); err != nil {
			return err
		}
		log.Info("history continues from the replica", "db", name, "txid", files[len(files)-1].MaxTXID, "files", len(files))
	}
	return os.RemoveAll(dd.seeding())
}

// isLatestState reports whether the database file at path holds the state
// after the replica's newest file last: same size and same checksum.
func isLatestState(ctx context.Context, replica ship.ReplicaClient, name string, last *ltx.FileInfo, path string) (bool, error) {
	read := func(off, n int64) ([]byte, error) {
		rc, err := replica.ReadLTXRange(ctx, name, 0, last.MinTXID, last.MaxTXID, off, n)
		if err != nil {
			return nil, fmt.Errorf("replica %s: %w", replica, err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			return nil, fmt.Errorf("replica %s: %w", replica, err)
		}
		return b, nil
	}
	hb, err := read(0, ltx.HeaderSize)
	if err != nil {
		return false, err
	}
	tb, err := read(last.Size-ltx.TrailerSize, ltx.TrailerSize)
	if err != nil {
		return false, err
	}
	var hdr ltx.Header
	var trailer ltx.Trailer
	if err := hdr.UnmarshalBinary(hb); err != nil {
		return false, fmt.Errorf("replica %s: %s: %v", replica, ship.LTXPath(name, 0, last.MinTXID, last.MaxTXID), err)
	}
	if err := trailer.UnmarshalBinary(tb); err != nil {
		return false, fmt.Errorf("replica %s: %s: %v", replica, ship.LTXPath(name, 0, last.MinTXID, last.MaxTXID), err)
	}
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || hdr.PageSize == 0 || st.Size() != int64(hdr.Commit)*int64(hdr.PageSize) {
		return false, err
	}
	sum, err := ltx.ChecksumReader(bufio.NewReaderSize(f, 1<<20), int(hdr.PageSize))
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	return sum == trailer.PostApplyChecksum, nil
}

// seedHistory copies files (the replica's level 0 of name) into the local
// store, through DIR/seeding.
func seedHistory(ctx context.Context, dd dataDir, store *ship.Store, replica ship.ReplicaClient, name string, files []*ltx.FileInfo, parallelism int) error {
	stage := ship.NewFileReplica(dd.seeding())
	err := restore.Download(ctx, replica, name, files, parallelism, func(fi *ltx.FileInfo, rd io.Reader) error {
		return stage.CreateLTX(name, 0, fi.MinTXID, fi.MaxTXID, func(w io.Writer) error {
			_, err := io.Copy(w, rd)
			return err
		}, false)
	})
	if err != nil {
		return fmt.Errorf("copy history of %s from %s: %w", name, replica, err)
	}
	if err := stage.SyncAll(); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(dd.seeding(), name), filepath.Join(dd.ltx(), name)); err != nil {
		return fmt.Errorf("data dir %s: %v", dd.path, err)
	}
	return store.SyncAll()
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
