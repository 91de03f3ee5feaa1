package pager

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/superfly/ltx"
)

// journalCapture follows rollback-journal transactions and writes to the
// database file that no journal or WAL covers.
//
// In rollback-journal modes the database file is written in place and the
// commit point is the journal's finalization: unlink (DELETE), truncation to
// zero (TRUNCATE) or a short zero write over its header (PERSIST). Until then
// every database write may still be rolled back, so the pages written are
// only noted, and read back from the file at the commit point. A write with
// no journal and no WAL comes from something other than SQLite (cp, or
// journal_mode=OFF): the whole file is captured when it is fsynced or closed.
type journalCapture struct {
	exists  bool   // the backing journal exists
	active  bool   // a transaction is under way (journal or database written since the last commit point)
	syncs   int    // journal fsyncs in this transaction
	dirty   []span // database byte ranges written in this transaction, sorted, merged
	foreign bool   // the database was written outside any transaction
}

// span is a byte range [lo, hi).
type span struct{ lo, hi int64 }

// addSpan merges [lo, hi) into a sorted list of disjoint spans. Writes mostly
// arrive in ascending order, so the common case appends or extends the last.
func addSpan(s []span, lo, hi int64) []span {
	if n := len(s); n == 0 || lo > s[n-1].hi {
		return append(s, span{lo, hi})
	} else if lo >= s[n-1].lo {
		s[n-1].hi = max(s[n-1].hi, hi)
		return s
	}
	i, _ := slices.BinarySearchFunc(s, lo, func(x span, lo int64) int {
		if x.hi < lo {
			return -1
		}
		return 1
	})
	j := i
	for j < len(s) && s[j].lo <= hi {
		lo, hi = min(lo, s[j].lo), max(hi, s[j].hi)
		j++
	}
	return slices.Replace(s, i, j, span{lo, hi})
}

type finalization int

const (
	finalDelete finalization = iota
	finalTruncate
	finalPersist
)

func (db *DB) journalWrite(p []byte, off int64) error {
	j := &db.jrnl
	j.exists = true
	if off == 0 && len(p) < 512 && j.active && allZero(p) {
		return db.journalFinalize(finalPersist)
	}
	j.active = true
	return nil
}

// dbWrite notes a write (n > 0) or a truncation (n == 0, off = new size) of
// the database file.
func (db *DB) dbWrite(off, n int64) error {
	j := &db.jrnl
	switch {
	case db.wal.valid:
		return nil // checkpoint: pages already recorded from the WAL (rule 8)
	case j.active || (j.exists && db.journalHot()):
		j.active = true // includes the rollback of a hot journal
	default:
		if size, _ := db.files.size(FileWAL); size > 0 {
			return nil // a WAL we have not seen a header of: SQLite is checkpointing it
		}
		j.foreign = true
	}
	if n > 0 {
		j.dirty = addSpan(j.dirty, off, off+n)
	}
	return nil
}

// journalFinalize handles a commit point of a rollback journal.
func (db *DB) journalFinalize(how finalization) error {
	j := &db.jrnl
	if !j.active {
		return nil
	}
	// DELETE with synchronous=FULL fsynced the journal twice; it gets the
	// same from us. TRUNCATE and PERSIST fsync the journal right after.
	durable := how == finalDelete && j.syncs >= 2
	err := db.captureFile(durable)
	j.active, j.syncs, j.dirty = false, 0, j.dirty[:0]
	return err
}

// captureForeign records a database written outside SQLite's transactions.
func (db *DB) captureForeign() error {
	j := &db.jrnl
	if !j.foreign {
		return nil
	}
	err := db.captureFile(false)
	j.foreign, j.dirty = false, j.dirty[:0]
	return err
}

// captureFile records the database file as it is now, as the commit that
// produced it. Only written pages (j.dirty) are compared unless the page size
// changed or there is no base state, in which case every page is recorded.
func (db *DB) captureFile(durable bool) error {
	pageSize, commit, err := db.fileSize()
	if errors.Is(err, ErrNotDatabase) {
		db.log.Warn("database file is not a SQLite database; not captured", "db", db.name, "err", err)
		db.needFull = true
		return nil
	} else if err != nil {
		return err
	}
	if commit == 0 {
		return nil // an empty file is not a database yet
	}
	readFile := func(pgno uint32, p []byte) error {
		return db.files.readAt(FileDB, p, int64(pgno-1)*int64(len(p)))
	}
	if db.txid == 0 || db.needFull || pageSize != db.pageSize || db.commit == 0 {
		err := db.record(commitSpec{pageSize: pageSize, commit: commit, full: true,
			pages: db.fullSource(pageSize, commit, readFile), durable: durable})
		if err == nil {
			db.needFull = false
		}
		return err
	}

	// Pages written, plus pages the database grew by, minus those that
	// ended up unchanged (a rolled-back spill writes the old images back).
	lock := ltx.LockPgno(pageSize)
	ps := int64(pageSize)
	var changed []uint32
	buf := db.pageBuf(pageSize)
	consider := func(p uint32) error {
		if p == lock || p > commit {
			return nil
		}
		if err := readFile(p, buf); err != nil {
			return err
		}
		if p > uint32(len(db.chk)) || uint64(PageChecksum(p, buf)) != db.chk[p-1] {
			changed = append(changed, p)
		}
		return nil
	}
	for _, s := range db.jrnl.dirty {
		for p := uint32(s.lo/ps) + 1; int64(p-1)*ps < s.hi && p <= commit; p++ {
			if err := consider(p); err != nil {
				return err
			}
		}
	}
	for p := db.commit + 1; p <= commit; p++ {
		if _, dup := slices.BinarySearch(changed, p); !dup {
			if err := consider(p); err != nil {
				return err
			}
		}
	}
	slices.Sort(changed)
	changed = slices.Compact(changed)
	if len(changed) == 0 && commit == db.commit {
		return nil // nothing changed: a rollback
	}
	return db.record(commitSpec{pageSize: pageSize, commit: commit, durable: durable,
		pages: func(yield func(uint32, []byte) error) error {
			for _, p := range changed {
				if err := readFile(p, buf); err != nil {
					return err
				}
				if err := yield(p, buf); err != nil {
					return err
				}
			}
			return nil
		}})
}

// captureDeletion records that the database file was removed: an LTX with
// no pages and a size of zero.
func (db *DB) captureDeletion() error {
	db.jrnl.foreign, db.jrnl.active, db.jrnl.dirty = false, false, db.jrnl.dirty[:0]
	if db.txid == 0 || db.commit == 0 {
		return nil
	}
	txid := db.txid + 1
	hdr := ltx.Header{
		Version: ltx.Version, PageSize: db.pageSize, Commit: 0,
		MinTXID: txid, MaxTXID: txid, Timestamp: time.Now().UnixMilli(),
		PreApplyChecksum: db.checksum(),
	}
	write := func(w io.Writer) error {
		if err := db.enc.lw.begin(w, hdr); err != nil {
			return err
		}
		return db.enc.lw.finish(ltx.ChecksumFlag)
	}
	if err := db.sink.WriteLTX(txid, txid, write, true); err != nil {
		return fmt.Errorf("write deletion ltx %s: %w", txid, err)
	}
	db.txid, db.commit, db.chk, db.sum = txid, 0, db.chk[:0], 0
	db.needFull = true
	db.wal.reset(WALHeader{}, false)
	return nil
}

// journalHot reports whether the backing journal starts with a hot header.
// A journal left behind by TRUNCATE or PERSIST mode is not hot, and a write
// to the database beside it comes from outside a transaction.
func (db *DB) journalHot() bool {
	var b [28]byte
	if err := db.files.readAt(FileJournal, b[:], 0); err != nil {
		return true // cannot tell: treat it as SQLite's
	}
	_, err := ParseJournalHeader(b[:])
	return err == nil
}

func allZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}
