package pager

import (
	"errors"
	"io"
	"time"
)

// Watch mode: the WAL is written by the kernel straight to the backing file
// (FUSE passthrough) and its commits are read back from there, instead of
// being recognised in each write as it passes through sqlfs.
//
// A commit read back is trusted by the same rule as in walTryCommit: every
// frame of the transaction carries the generation's salts and the checksums
// chain from the last commit — what SQLite's own recovery would accept. The
// scan always starts at the first frame after the last commit and never
// remembers frames beyond it, because a rolled-back transaction leaves frames
// there that the next transaction overwrites without a trace.
//
// What makes watch mode lose nothing: SQLite can only discard WAL frames by
// restarting or truncating the WAL after a checkpoint has copied them into
// the database file, and every write to the database file, WAL truncation,
// unlink or rename passes through sqlfs, which calls CatchUp first. A kill -9
// of sqlfs leaves committed frames in the WAL, where the next Open finds them.

// tailChunk is how much of the WAL one read covers.
const tailChunk = 1 << 20

// lazyScanSlack is how much a scan that found no commit may cost before the
// next change-notified scan is put off: a transaction spilling thousands of
// frames would otherwise be read from its start at every notification.
const lazyScanSlack = 64 << 10

// CatchUp records every commit SQLite has completed in the backing WAL since
// the last one recorded, and makes history durable. Call it before any
// operation that could let SQLite reuse WAL frames: a write to or truncation
// of the database file (a checkpoint), and a truncation, unlink or rename of
// the WAL.
func (db *DB) CatchUp() error {
	return db.event(db.walSettle)
}

// walSettle catches up with the WAL and makes what was recorded since the
// last time durable: until then the WAL itself is the durable copy.
func (db *DB) walSettle() error {
	if _, err := db.walCatchUp(); err != nil {
		return err
	}
	if !db.tail.unsynced {
		return nil // nothing read back from the WAL since history was last made durable
	}
	if err := db.sink.Sync(); err != nil {
		return err
	}
	db.tail.unsynced = false
	return nil
}

// Tail is CatchUp for change notifications: it returns retry > 0 instead of
// scanning when the last scans read a long uncommitted transaction for
// nothing, and the caller should call again after retry.
func (db *DB) Tail() (retry time.Duration, err error) {
	err = db.event(func() error {
		if wait := time.Until(db.tail.next); wait > 0 {
			retry = wait
			return nil
		}
		start := time.Now()
		scanned, err := db.walCatchUp()
		if scanned > lazyScanSlack {
			// Spend at most about a tenth of the time scanning while a
			// large transaction is being written.
			db.tail.next = time.Now().Add(10 * time.Since(start))
		}
		return err
	})
	return retry, err
}

// tailState is watch mode's bookkeeping between notifications.
type tailState struct {
	next     time.Time // no change-notified scan before this
	unsynced bool      // commits were read back from the WAL since history was last made durable
	buf      []byte
}

// walCatchUp reads the backing WAL from the first frame after the last commit
// and records each complete, valid transaction in it. It returns how many
// bytes of frames it read without finding a commit.
func (db *DB) walCatchUp() (scanned int64, err error) {
	w := &db.wal
	f, err := db.files.file(FileWAL)
	if f == nil || err != nil {
		return 0, err
	}
	var hb [WALHeaderSize]byte
	if n, err := f.ReadAt(hb[:], 0); n < WALHeaderSize {
		if err == io.EOF {
			err = nil
		}
		return 0, err
	}
	h, err := ParseWALHeader(hb[:])
	if err != nil {
		return 0, nil // not a WAL SQLite would read: nothing committed in it
	}
	if !w.valid || h.Salt1 != w.hdr.Salt1 || h.Salt2 != w.hdr.Salt2 || h.PageSize != w.hdr.PageSize {
		w.reset(h, true) // a new generation (rule 7)
	}
	fsz := w.frameSize()
	if cap(db.tail.buf) < tailChunk {
		db.tail.buf = make([]byte, tailChunk)
	}
	buf := db.tail.buf[:max(tailChunk/fsz, 1)*fsz]
	for {
		first := w.last + 1
		n, err := f.ReadAt(buf, WALFrameOffset(h.PageSize, first))
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		frames := int64(n) / fsz
		for i := int64(0); i < frames; i++ {
			fr := buf[i*fsz : (i+1)*fsz]
			fh := ParseWALFrameHeader(fr)
			if fh.Salt1 != w.hdr.Salt1 || fh.Salt2 != w.hdr.Salt2 {
				return int64(first+int(i)-w.last-1) * fsz, nil // past this generation's frames
			}
			if fh.Commit == 0 {
				continue
			}
			k := first + int(i)
			var head, page []byte
			if k == w.last+1 {
				head, page = fr[:WALFrameHeaderSize], fr[WALFrameHeaderSize:]
			}
			if ok, err := db.walCommitAt(k, head, page); !ok || err != nil {
				return int64(k-w.last) * fsz, err // incomplete: a later change brings the rest
			}
		}
		pending := int64(first+int(frames)-w.last-1) * fsz
		switch {
		case n < len(buf):
			return pending, nil // read to the end of the file
		case w.last < first:
			// A transaction longer than one chunk: look for its commit
			// frame by the headers alone.
			return db.walScanLong(first+int(frames), pending)
		}
	}
}

// walCommitAt records the transaction that ends with commit frame k, if it
// is complete and valid, and reports whether it was.
func (db *DB) walCommitAt(k int, head, page []byte) (bool, error) {
	w := &db.wal
	w.pending, w.cand = w.pending[:0], k
	err := db.walTryCommit(head, page)
	w.cand = 0
	if w.last == k {
		db.tail.unsynced = true
	}
	return w.last == k, err
}

// walScanLong looks for the commit frame of a transaction that started before
// frame from and is longer than one chunk, reading frame headers only.
func (db *DB) walScanLong(from int, scanned int64) (int64, error) {
	w := &db.wal
	f, err := db.files.file(FileWAL)
	if f == nil || err != nil {
		return scanned, err
	}
	fsz := w.frameSize()
	var hb [WALFrameHeaderSize]byte
	for k := from; ; k++ {
		n, err := f.ReadAt(hb[:], WALFrameOffset(w.hdr.PageSize, k))
		if n < WALFrameHeaderSize {
			if err != nil && !errors.Is(err, io.EOF) {
				return scanned, err
			}
			return scanned, nil
		}
		fh := ParseWALFrameHeader(hb[:])
		if fh.Salt1 != w.hdr.Salt1 || fh.Salt2 != w.hdr.Salt2 {
			return scanned, nil
		}
		scanned += fsz
		if fh.Commit == 0 {
			continue
		}
		if ok, err := db.walCommitAt(k, nil, nil); !ok || err != nil {
			return scanned, err
		}
		return db.walCatchUp() // the rest, from the new last commit
	}
}
