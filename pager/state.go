package pager

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"os"

	"github.com/superfly/ltx"
)

// fileState is the committed state as SQLite would find it in the files.
type fileState struct {
	pageSize uint32
	commit   uint32       // pages, with every committed WAL frame applied
	scan     *WALScan     // the WAL's committed frames; nil without a valid WAL
	journal  *JournalScan // a hot journal SQLite will roll back; nil if none
}

// readFiles inspects the database, its WAL and its journal.
func (db *DB) readFiles() (*fileState, error) {
	fs := &fileState{}
	var err error
	if fs.pageSize, fs.commit, err = db.fileSize(); err != nil && !errors.Is(err, ErrNotDatabase) {
		return nil, err
	}
	if jsize, err := db.files.size(FileJournal); err != nil {
		return nil, err
	} else if jsize > 0 && fs.pageSize != 0 {
		js, err := ScanJournal(readerAt{&db.files, FileJournal}, jsize)
		if err == nil {
			fs.journal = js
			if js.Header.PageSize == fs.pageSize {
				fs.commit = js.Header.DBSize
			}
			return fs, nil
		} else if !errors.Is(err, ErrJournalNotHot) {
			return nil, fmt.Errorf("scan journal: %w", err)
		}
	}
	if wsize, err := db.files.size(FileWAL); err != nil {
		return nil, err
	} else if wsize > 0 {
		scan, err := ScanWAL(readerAt{&db.files, FileWAL}, wsize)
		if err != nil {
			return nil, fmt.Errorf("scan wal: %w", err)
		}
		if scan.Valid {
			fs.scan = scan
			if n := len(scan.Frames); n > 0 {
				fs.pageSize = scan.Header.PageSize
				fs.commit = scan.Frames[n-1].Commit
			}
		}
	}
	return fs, nil
}

// fileSize reads the database file's header: its page size and its size in
// pages (the header's count when SQLite vouches for it, else the file size).
// An empty file is 0, 0; anything else that is not a database is
// ErrNotDatabase.
func (db *DB) fileSize() (pageSize, pages uint32, err error) {
	size, err := db.files.size(FileDB)
	if err != nil || size == 0 {
		return 0, 0, err
	}
	var hb [DBHeaderSize]byte
	if err := db.files.readAt(FileDB, hb[:], 0); err != nil {
		return 0, 0, err
	}
	h, err := ParseDBHeader(hb[:])
	if err != nil {
		return 0, 0, err
	}
	pages = uint32(size / int64(h.PageSize))
	if h.PageCountValid() {
		pages = h.PageCount
	}
	return h.PageSize, pages, nil
}

// computeState reads every page of the committed state, as it stood after
// the first base committed WAL frames (db.wal.index holds those), and sets
// the page checksums from it.
func (db *DB) computeState(fs *fileState, base int) error {
	db.pageSize, db.commit = fs.pageSize, fs.commit
	if fs.scan != nil && base < len(fs.scan.Frames) {
		// The state history knows: the database file plus frames up to base.
		db.commit = 0
		if base > 0 {
			db.commit = fs.scan.Frames[base-1].Commit
		} else if _, n, err := db.fileSize(); err == nil {
			db.commit = n
		} else if !errors.Is(err, ErrNotDatabase) {
			return err
		}
	}
	if db.pageSize == 0 {
		db.commit = 0
	}
	db.chk = make([]uint64, db.commit)
	db.sum = 0
	if db.commit == 0 {
		return nil
	}

	// Journal images override the database file (first image of a page wins).
	journal := map[uint32]int64{}
	if fs.journal != nil {
		for _, r := range fs.journal.Records {
			if _, ok := journal[r.Pgno]; !ok {
				journal[r.Pgno] = r.Offset
			}
		}
	}
	ps := int64(db.pageSize)
	lock := ltx.LockPgno(db.pageSize)
	const chunkPages = 256
	buf := make([]byte, chunkPages*ps)
	for first := uint32(1); first <= db.commit; first += chunkPages {
		n := min(chunkPages, db.commit-first+1)
		chunk := buf[:int64(n)*ps]
		if err := db.files.readAt(FileDB, chunk, int64(first-1)*ps); err != nil {
			return err
		}
		for i := uint32(0); i < n; i++ {
			p := first + i
			page := chunk[int64(i)*ps : int64(i+1)*ps]
			if off, ok := journal[p]; ok {
				if err := db.files.readAt(FileJournal, page, off); err != nil {
					return err
				}
			} else if off, ok := db.wal.index[p]; ok {
				if err := db.files.readAt(FileWAL, page, off); err != nil {
					return err
				}
			}
			if p == lock {
				continue
			}
			c := uint64(PageChecksum(p, page))
			db.chk[p-1] = c
			db.sum ^= c
		}
	}
	return nil
}

// The saved state lets the next Open skip reading every page. It is only
// trusted when history, the database file and the WAL are exactly as they
// were when it was written.
var stateMagic = [8]byte{'s', 'q', 'l', 'f', 's', 'c', 'k', '1'}

type stateHeader struct {
	Magic    [8]byte
	TXID     uint64
	Checksum uint64
	PageSize uint32
	Commit   uint32
	DBSize   int64
	DBMtime  int64
}

func (db *DB) saveState(path string) error {
	if db.txid == 0 || db.needFull || (db.files.exists(FileJournal) && db.journalHot()) {
		os.Remove(path)
		return nil
	}
	if size, _ := statBacking(db.files.name(FileWAL)); size > 0 {
		os.Remove(path) // the WAL must be read again at the next start
		return nil
	}
	size, mtime := statBacking(db.path)
	h := stateHeader{Magic: stateMagic, TXID: uint64(db.txid), Checksum: uint64(db.checksum()),
		PageSize: db.pageSize, Commit: db.commit, DBSize: size, DBMtime: mtime}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	crc := crc64.New(crc64.MakeTable(crc64.ISO))
	w := bufio.NewWriter(io.MultiWriter(f, crc))
	binary.Write(w, binary.LittleEndian, &h)
	binary.Write(w, binary.LittleEndian, db.chk)
	w.Flush()
	binary.Write(f, binary.LittleEndian, crc.Sum64())
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// loadState reads the saved state if it still describes the files and last.
// It removes the file either way: it is only good for one start.
func (db *DB) loadState(path string, last ltx.Pos) bool {
	data, err := os.ReadFile(path)
	os.Remove(path)
	if err != nil || last.TXID == 0 {
		return false
	}
	var h stateHeader
	hsize := binary.Size(h)
	if len(data) < hsize+8 {
		return false
	}
	body, tail := data[:len(data)-8], data[len(data)-8:]
	if crc64.Checksum(body, crc64.MakeTable(crc64.ISO)) != binary.LittleEndian.Uint64(tail) {
		return false
	}
	if binary.Read(bytes.NewReader(body[:hsize]), binary.LittleEndian, &h) != nil || h.Magic != stateMagic {
		return false
	}
	size, mtime := statBacking(db.path)
	walSize, _ := statBacking(db.files.name(FileWAL))
	if ltx.TXID(h.TXID) != last.TXID || ltx.Checksum(h.Checksum) != last.PostApplyChecksum ||
		h.DBSize != size || h.DBMtime != mtime || walSize > 0 || (db.files.exists(FileJournal) && db.journalHot()) ||
		int64(len(body)-hsize) != int64(h.Commit)*8 {
		return false
	}
	chk := make([]uint64, h.Commit)
	if binary.Read(bytes.NewReader(body[hsize:]), binary.LittleEndian, chk) != nil {
		return false
	}
	var sum uint64
	for _, c := range chk {
		sum ^= c
	}
	if ltx.ChecksumFlag|ltx.Checksum(sum) != last.PostApplyChecksum {
		return false
	}
	db.chk, db.sum, db.pageSize, db.commit = chk, sum, h.PageSize, h.Commit
	return true
}
