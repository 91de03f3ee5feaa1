package pager

import (
	"fmt"
	"io"
	"time"

	"github.com/superfly/ltx"
)

// pageSource yields the pages of one commit in ascending page number order,
// never the lock page. data is only valid during the call.
type pageSource func(yield func(pgno uint32, data []byte) error) error

// commitSpec describes one commit to record.
type commitSpec struct {
	pageSize uint32
	commit   uint32 // database size in pages after the commit
	full     bool   // pages holds every page 1..commit: the state is rebuilt from it
	pages    pageSource

	walOffset, walSize int64 // where the commit sat in the WAL (0 for journal modes)
	walSalt1, walSalt2 uint32
	durable            bool // make the LTX durable before returning
}

// encodeBuffers are reused across commits so the steady state allocates little.
type encodeBuffers struct {
	lw      ltxWriter
	updates []pageUpdate
	page    []byte
}

type pageUpdate struct {
	pgno uint32
	chk  uint64
}

// record writes the LTX file of one commit at TXID txid+1 and, once the sink
// has it, advances the position. A full commit on a database without history
// becomes the snapshot at TXID 1.
func (db *DB) record(c commitSpec) error {
	if c.commit == 0 {
		return fmt.Errorf("commit of an empty database")
	}
	if !c.full && (db.txid == 0 || c.pageSize != db.pageSize) {
		return fmt.Errorf("incremental commit without a base state (txid %d, page size %d -> %d)", db.txid, db.pageSize, c.pageSize)
	}
	txid := db.txid + 1
	hdr := ltx.Header{
		Version:   ltx.Version,
		PageSize:  c.pageSize,
		Commit:    c.commit,
		MinTXID:   txid,
		MaxTXID:   txid,
		Timestamp: time.Now().UnixMilli(),
		WALOffset: c.walOffset,
		WALSize:   c.walSize,
		WALSalt1:  c.walSalt1,
		WALSalt2:  c.walSalt2,
	}
	if txid > 1 {
		hdr.PreApplyChecksum = db.checksum()
	}
	lock := ltx.LockPgno(c.pageSize)

	var newChk []uint64 // full commits build the whole array
	sum := db.sum
	if c.full {
		newChk = make([]uint64, c.commit)
		sum = 0
	}
	db.enc.updates = db.enc.updates[:0]

	write := func(w io.Writer) error {
		enc := &db.enc.lw
		if err := enc.begin(w, hdr); err != nil {
			return fmt.Errorf("encode header: %w", err)
		}
		next := uint32(1)
		err := c.pages(func(pgno uint32, data []byte) error {
			if pgno > c.commit || pgno == lock || pgno < next {
				return fmt.Errorf("page %d out of order or range (commit %d)", pgno, c.commit)
			}
			if c.full && pgno != next && !(next == lock && pgno == lock+1) {
				return fmt.Errorf("full commit skips page %d", next)
			}
			next = pgno + 1
			chk := uint64(PageChecksum(pgno, data))
			if c.full {
				newChk[pgno-1] = chk
				sum ^= chk
			} else {
				db.enc.updates = append(db.enc.updates, pageUpdate{pgno, chk})
			}
			return enc.page(pgno, data)
		})
		if err != nil {
			return err
		}
		if c.full && c.commit >= next && !(next == lock && c.commit == lock) {
			return fmt.Errorf("full commit ends at page %d of %d", next-1, c.commit)
		}
		if !c.full {
			sum = db.applyUpdates(db.enc.updates, c.commit)
		}
		return enc.finish(ltx.ChecksumFlag | ltx.Checksum(sum))
	}
	if err := db.sink.WriteLTX(txid, txid, write, c.durable); err != nil {
		return fmt.Errorf("write ltx %s: %w", txid, err)
	}

	// The file is in the store: advance.
	db.txid = txid
	db.pageSize = c.pageSize
	if c.full {
		db.chk = newChk
	} else {
		for _, u := range db.enc.updates {
			db.chk[u.pgno-1] = u.chk
		}
		db.chk = db.chk[:c.commit]
	}
	db.commit = c.commit
	db.sum = sum
	return nil
}

// applyUpdates returns the state checksum after replacing the given pages and
// resizing the database to commit pages. It grows db.chk (with zeros) when
// needed but changes no checksum in it: record does that once the file is
// stored.
func (db *DB) applyUpdates(updates []pageUpdate, commit uint32) uint64 {
	sum := db.sum
	for p := commit + 1; p <= uint32(len(db.chk)); p++ {
		sum ^= db.chk[p-1] // pages cut off by a shrink
	}
	if int(commit) > len(db.chk) {
		db.chk = append(db.chk, make([]uint64, int(commit)-len(db.chk))...)
	}
	for _, u := range updates {
		sum ^= db.chk[u.pgno-1] ^ u.chk
	}
	return sum
}

// readLogical fills p with page pgno of the committed state: the newest
// committed WAL frame for it, else the database file.
func (db *DB) readLogical(pgno uint32, p []byte) error {
	if off, ok := db.wal.index[pgno]; ok {
		return db.files.readAt(FileWAL, p, off)
	}
	return db.files.readAt(FileDB, p, int64(pgno-1)*int64(len(p)))
}

// growthPages returns the pages between the old and new size that a commit
// did not write: SQLite reads them from the files as they are, so they are
// recorded as such.
func (db *DB) growthPages(commit uint32, written func(uint32) bool) []uint32 {
	var missing []uint32
	lock := ltx.LockPgno(db.pageSize)
	for p := db.commit + 1; p <= commit; p++ {
		if p != lock && !written(p) {
			missing = append(missing, p)
		}
	}
	return missing
}

// fullSource yields every page of the committed state 1..commit, reading
// through read.
func (db *DB) fullSource(pageSize, commit uint32, read func(pgno uint32, p []byte) error) pageSource {
	return func(yield func(uint32, []byte) error) error {
		buf := db.pageBuf(pageSize)
		lock := ltx.LockPgno(pageSize)
		for p := uint32(1); p <= commit; p++ {
			if p == lock {
				continue
			}
			if err := read(p, buf); err != nil {
				return err
			}
			if err := yield(p, buf); err != nil {
				return err
			}
		}
		return nil
	}
}

func (db *DB) pageBuf(pageSize uint32) []byte {
	if uint32(cap(db.enc.page)) < pageSize {
		db.enc.page = make([]byte, pageSize)
	}
	return db.enc.page[:pageSize]
}
