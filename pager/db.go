package pager

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/superfly/ltx"
)

// DB captures the commits of one SQLite database from the file events its
// caller reports, and hands each commit to a Sink as one LTX file.
//
// Invariants, under mu:
//   - (txid, sum) is the position of the last LTX handed to the sink: the
//     committed state it describes is exactly the state SQLite would read now
//     (database file + committed WAL frames, or the rollback target of a hot
//     journal).
//   - chk[p-1] is the page checksum of page p of that state, for every page up
//     to commit (0 for the lock page), and sum is their XOR.
//   - A commit's LTX is handed to the sink before the event that completed the
//     commit returns, so the write that completes a commit returns to SQLite
//     only after its LTX is in the store. In watch mode (Config.Watch) WAL
//     writes are not events: their commits are handed over by CatchUp, which
//     the caller runs when the WAL changes and before anything that could
//     let SQLite reuse WAL frames, and by Sync of the WAL.
type DB struct {
	name string
	path string // backing database file; -wal and -journal sit beside it
	sink Sink
	log  *slog.Logger

	mu       sync.Mutex
	txid     ltx.TXID
	sum      uint64   // XOR of page checksums, without ltx.ChecksumFlag
	pageSize uint32   // 0 until the database has a header
	commit   uint32   // pages in the committed state
	chk      []uint64 // per page checksum of the committed state
	failed   error    // set when capture broke; every later event reports it
	needFull bool     // the next commit must carry every page (chk no longer matches the files)

	files backing
	wal   walCapture
	jrnl  journalCapture
	watch bool      // the WAL's writes are not reported: CatchUp reads its commits back
	tail  tailState // watch mode's bookkeeping

	enc encodeBuffers
}

// FileKind names which of a database's files an event is about.
type FileKind int

const (
	FileDB FileKind = iota
	FileWAL
	FileJournal
)

func (k FileKind) String() string {
	switch k {
	case FileDB:
		return "db"
	case FileWAL:
		return "wal"
	case FileJournal:
		return "journal"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Sink receives the LTX files of one database in TXID order.
type Sink interface {
	// WriteLTX stores one complete LTX file, whose bytes write produces. It
	// returns once the file is in the store under its final name; with
	// durable set, once it is also on stable storage. If write fails, nothing
	// is stored.
	WriteLTX(minTXID, maxTXID ltx.TXID, write func(io.Writer) error, durable bool) error
	// Sync makes every file written so far durable, and acknowledged.
	Sync() error
	// Acknowledge returns once every file written so far is acknowledged by
	// whatever must have it before a commit counts as safe (a synchronous
	// replica), without making the store itself durable.
	Acknowledge() error
}

// Config says where a database lives and where it stands in its history.
type Config struct {
	Name string // database name, as in the replica layout
	Path string // backing database file
	Sink Sink
	Log  *slog.Logger

	// Last is the newest LTX file of the database's history, nil when there is none.
	Last *LastFile
	// StatePath, if set, is where Close saves page checksums so the next Open
	// need not read the whole database again.
	StatePath string
	// Watch says the WAL's writes will not be reported: its commits are read
	// back from the backing file by CatchUp and Tail (see waltail.go).
	Watch bool
}

// LastFile is what Open needs to know of the newest LTX file in history.
type LastFile struct {
	Header  ltx.Header
	Trailer ltx.Trailer
}

// ErrCaptureFailed wraps the first error that stopped capture; after it every
// write to the database fails, since a commit that cannot be recorded must not
// be acknowledged.
var ErrCaptureFailed = errors.New("commit capture failed")

// Pos returns the current position: last TXID and post-apply checksum.
func (db *DB) Pos() ltx.Pos {
	db.mu.Lock()
	defer db.mu.Unlock()
	return ltx.Pos{TXID: db.txid, PostApplyChecksum: db.checksum()}
}

// Name is the database's name.
func (db *DB) Name() string { return db.name }

func (db *DB) checksum() ltx.Checksum {
	if db.commit == 0 && db.txid == 0 {
		return 0
	}
	return ltx.ChecksumFlag | ltx.Checksum(db.sum)
}

// fail records err as the reason capture stopped and returns the error every
// later event gets.
func (db *DB) fail(err error) error {
	if db.failed == nil {
		db.failed = fmt.Errorf("%w: %s: %v", ErrCaptureFailed, db.name, err)
		db.log.Error("commit capture stopped", "db", db.name, "err", err)
	}
	return db.failed
}

// event runs one file event under the lock. Once capture has failed every
// event reports that failure; an event's own error stops capture.
func (db *DB) event(fn func() error) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.failed != nil {
		return db.failed
	}
	if err := fn(); err != nil {
		return db.fail(err)
	}
	return nil
}

// Write reports that p was written at off to the backing file of kind. Call
// it after the backing write succeeded; an error means the write must be
// reported to SQLite as failed.
func (db *DB) Write(kind FileKind, p []byte, off int64) error {
	return db.event(func() error {
		switch kind {
		case FileWAL:
			return db.walWrite(p, off)
		case FileJournal:
			return db.journalWrite(p, off)
		}
		return db.dbWrite(off, int64(len(p)))
	})
}

// Truncate reports that the backing file of kind was set to size.
func (db *DB) Truncate(kind FileKind, size int64) error {
	return db.event(func() error {
		switch kind {
		case FileWAL:
			db.walTruncate(size)
		case FileJournal:
			if size == 0 {
				return db.journalFinalize(finalTruncate)
			}
		case FileDB:
			return db.dbWrite(size, 0)
		}
		return nil
	})
}

// Sync reports an fsync of the backing file of kind. Call it after the
// backing fsync succeeded: it returns once every LTX file up to now is durable.
func (db *DB) Sync(kind FileKind) error {
	return db.event(func() error {
		if kind == FileJournal {
			db.jrnl.syncs++
		}
		if kind == FileWAL && db.watch {
			// The WAL fsync makes every commit in it durable in the data
			// dir, and Open rebuilds history from the WAL after a crash;
			// the store itself is made durable before a checkpoint lets
			// SQLite reuse the WAL (CatchUp).
			if _, err := db.walCatchUp(); err != nil {
				return err
			}
			return db.sink.Acknowledge()
		}
		if kind == FileDB {
			if err := db.captureForeign(); err != nil {
				return err
			}
		}
		if err := db.sink.Sync(); err != nil {
			return err
		}
		db.tail.unsynced = false
		return nil
	})
}

// Created reports that the backing file of kind was created, or opened with
// O_TRUNC (then size is 0).
func (db *DB) Created(kind FileKind) error {
	return db.event(func() error {
		db.files.forget(kind)
		switch kind {
		case FileJournal:
			db.jrnl.exists = true
		case FileWAL:
			db.walTruncate(0)
		case FileDB:
			return db.dbWrite(0, 0)
		}
		return nil
	})
}

// Removed reports that the backing file of kind was unlinked (or renamed away).
func (db *DB) Removed(kind FileKind) error {
	return db.event(func() error {
		db.files.forget(kind)
		switch kind {
		case FileJournal:
			err := db.journalFinalize(finalDelete)
			db.jrnl.exists = false
			return err
		case FileWAL:
			db.walTruncate(0)
		case FileDB:
			return db.captureDeletion()
		}
		return nil
	})
}

// Replaced reports that a file was renamed over the backing database file:
// its content is captured now as one commit.
func (db *DB) Replaced() error {
	return db.event(func() error {
		db.files.forget(FileDB)
		db.jrnl.foreign = true
		return db.captureForeign()
	})
}

// Closed reports that a handle of the backing database file was closed. A
// database written by something other than SQLite (cp) is captured now.
func (db *DB) Closed() error {
	return db.event(db.captureForeign)
}

// Close saves the page checksums for the next Open and releases backing
// files. Call it once no handle of the database is open.
func (db *DB) Close(statePath string) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	var err error
	if db.failed == nil && db.watch {
		if err = db.walSettle(); err != nil {
			db.fail(err)
		}
	}
	if db.failed == nil && statePath != "" {
		err = db.saveState(statePath)
	}
	db.files.close()
	return err
}

// statBacking returns the size and modification time of a backing file; a
// missing file is size -1.
func statBacking(path string) (int64, int64) {
	fi, err := os.Stat(path)
	if err != nil {
		return -1, 0
	}
	return fi.Size(), fi.ModTime().UnixNano()
}
