package pager

import (
	"fmt"
	"log/slog"

	"github.com/superfly/ltx"
)

// Open starts capture for one database. It brings history up to date with
// the files first: a database with no history gets its snapshot (TXID 1), and
// commits that reached the WAL or the database file but not history (sqlfs
// was killed between the two) are recorded now, one LTX per WAL commit where
// the WAL still holds them. Page checksums come from the state Close saved
// when it still matches the files; otherwise every page is read once.
func Open(cfg Config) (*DB, error) {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	db := &DB{name: cfg.Name, path: cfg.Path, sink: cfg.Sink, log: log, watch: cfg.Watch}
	db.files.path = cfg.Path
	db.wal.reset(WALHeader{}, false)
	db.jrnl.exists = db.files.exists(FileJournal)

	var last ltx.Pos
	if cfg.Last != nil {
		last = ltx.Pos{TXID: cfg.Last.Header.MaxTXID, PostApplyChecksum: cfg.Last.Trailer.PostApplyChecksum}
	}
	db.txid = last.TXID
	if cfg.StatePath != "" && db.loadState(cfg.StatePath, last) {
		log.Debug("page checksums loaded", "db", db.name, "txid", db.txid, "pages", db.commit)
		return db, nil
	}
	if err := db.recover(cfg.Last); err != nil {
		db.files.close()
		return nil, fmt.Errorf("open %s: %w", cfg.Name, err)
	}
	return db, nil
}

// recover computes the committed state from the files and reconciles it with
// history.
func (db *DB) recover(lastFile *LastFile) error {
	fileState, err := db.readFiles()
	if err != nil {
		return err
	}
	if fileState.journal != nil {
		// SQLite will roll the hot journal back: that rolled-back state is
		// the committed one. Nothing in the WAL counts then.
		db.log.Info("hot journal found; its rollback is the committed state", "db", db.name)
		fileState.scan = nil
	}
	scan := fileState.scan
	if scan != nil {
		db.wal.reset(scan.Header, true)
	}

	// The WAL frame that history already covers, if history came from this
	// WAL generation.
	base := 0
	if scan != nil && lastFile != nil && lastFile.Header.WALSalt1 == scan.Header.Salt1 &&
		lastFile.Header.WALSalt2 == scan.Header.Salt2 && lastFile.Header.WALOffset != 0 {
		end := lastFile.Header.WALOffset + lastFile.Header.WALSize
		for i, f := range scan.Frames {
			if f.Offset+db.wal.frameSize() == end {
				base = i + 1
			}
		}
	}
	if scan != nil && lastFile == nil {
		base = len(scan.Frames) // no history: the snapshot takes every commit
	}
	if scan != nil {
		db.setWALBase(scan, base)
	}
	if err := db.computeState(fileState, base); err != nil {
		return err
	}

	switch {
	case lastFile == nil:
		if db.commit == 0 {
			return nil // no database yet
		}
		db.log.Info("no history: recording a snapshot", "db", db.name, "pages", db.commit)
		return db.snapshotNow()
	case db.checksum() == lastFile.Trailer.PostApplyChecksum:
		// History matches the files up to base: the WAL's later commits are
		// what sqlfs did not get to record.
		if scan != nil && base < len(scan.Frames) {
			return db.replayWAL(scan, base)
		}
		return nil
	case lastFile.Header.Commit == 0 && db.commit == 0:
		db.sum = uint64(lastFile.Trailer.PostApplyChecksum &^ ltx.ChecksumFlag)
		return nil // deleted, and still gone
	default:
		// The files hold changes history lacks, and the WAL cannot say
		// which: record the whole database as the next commit.
		db.log.Warn("database differs from history; recording it whole", "db", db.name,
			"txid", lastFile.Header.MaxTXID, "history", lastFile.Trailer.PostApplyChecksum, "files", db.checksum())
		if scan != nil {
			db.setWALBase(scan, len(scan.Frames))
		}
		db.pageSize, db.commit = fileState.pageSize, fileState.commit
		db.sum = uint64(lastFile.Trailer.PostApplyChecksum &^ ltx.ChecksumFlag)
		db.needFull = true
		return db.snapshotNow()
	}
}

// setWALBase makes the first n scanned frames the committed part of the WAL.
func (db *DB) setWALBase(scan *WALScan, n int) {
	w := &db.wal
	w.reset(scan.Header, true)
	for _, f := range scan.Frames[:n] {
		w.index[f.Pgno] = f.Offset + WALFrameHeaderSize
		w.last, w.s1, w.s2 = f.N, f.Checksum1, f.Checksum2
	}
}

// replayWAL records each commit of the scanned WAL after frame base as the
// live capture would have.
func (db *DB) replayWAL(scan *WALScan, base int) error {
	for _, f := range scan.Frames[base:] {
		if f.Commit == 0 {
			continue
		}
		db.wal.pending = db.wal.pending[:0]
		db.wal.cand = f.N
		before := db.txid
		if err := db.walTryCommit(nil, nil); err != nil {
			return err
		}
		if db.wal.last != f.N {
			return fmt.Errorf("wal commit at frame %d did not validate on replay", f.N)
		}
		if db.txid != before {
			db.log.Info("recorded a commit found in the WAL", "db", db.name, "txid", db.txid)
		}
	}
	return nil
}

// snapshotNow records the whole committed state as the next commit: the
// snapshot at TXID 1, or a commit carrying every page when history and files
// disagree (needFull).
func (db *DB) snapshotNow() error {
	if db.commit == 0 {
		return nil
	}
	c := commitSpec{pageSize: db.pageSize, commit: db.commit, full: true, durable: true,
		pages: db.fullSource(db.pageSize, db.commit, db.readLogical)}
	if w := &db.wal; w.valid && w.last > 0 {
		// The snapshot covers the WAL up to its last commit: say so, so a
		// later recovery replays only the commits after it.
		c.walOffset = WALHeaderSize
		c.walSize = WALFrameOffset(w.hdr.PageSize, w.last+1) - WALHeaderSize
		c.walSalt1, c.walSalt2 = w.hdr.Salt1, w.hdr.Salt2
	}
	err := db.record(c)
	if err == nil {
		db.needFull = false
	}
	return err
}
