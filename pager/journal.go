package pager

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// A rollback journal is one or more segments. Each segment starts at a
// multiple of the sector size with a header padded to the sector size:
//
//	0  magic (8 bytes)     4 bytes each, big-endian, from offset 8:
//	8  nRec                record count; 0xffffffff = up to end of file
//	12 nonce               checksum initializer, new for every segment
//	16 dbSize              database size in pages before the transaction
//	20 sector size         only read from the first segment
//	24 page size           only read from the first segment
//
// and is followed by nRec records: page number (4), original page image
// (page size), checksum (4) = nonce + every 200th byte of the image counted
// back from its end. The journal is hot (a rollback is owed) once the first
// header carries the magic; SQLite writes the magic only after the records
// are synced, and finalizes a committed journal by deleting it, truncating it
// or zeroing its header.

// JournalMagic is the first 8 bytes of every valid rollback journal segment
// header.
var JournalMagic = [8]byte{0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7}

// ErrJournalNotHot is returned (wrapped) when a journal's first header would
// make SQLite roll nothing back: missing, too short, without the magic
// (SQLite zeroes it to commit in PERSIST mode and before the records are
// synced), or with an impossible page or sector size.
var ErrJournalNotHot = errors.New("journal header not hot")

const (
	journalHeaderFields = 28         // bytes of the header that hold fields
	journalNRecToEOF    = 0xffffffff // nRec meaning "records up to end of file"
	maxSectorSize       = 65536
	pendingByte         = 0x40000000 // offset of SQLite's lock byte range
)

// JournalHeader holds the fields of a journal segment header.
type JournalHeader struct {
	NRec       uint32 // records in the segment; 0xffffffff = to end of file
	Nonce      uint32 // checksum initializer for the segment's records
	DBSize     uint32 // database size in pages before the transaction
	SectorSize uint32 // header size and segment alignment, in bytes
	PageSize   uint32 // database page size, in bytes
}

// ParseJournalHeader decodes the first segment header of a journal from b,
// which must hold at least 28 bytes. A missing or zeroed magic, or a page or
// sector size SQLite would reject (page size a power of two 512..65536,
// sector size a power of two 32..65536), gives an error wrapping
// ErrJournalNotHot. Page size 0, written by SQLite before 3.5.8, is rejected
// too: the page size cannot be known from the journal alone.
func ParseJournalHeader(b []byte) (JournalHeader, error) {
	if len(b) < journalHeaderFields {
		return JournalHeader{}, fmt.Errorf("parse journal header: %d bytes, need %d: %w", len(b), journalHeaderFields, ErrJournalNotHot)
	}
	if !bytes.Equal(b[:8], JournalMagic[:]) {
		return JournalHeader{}, fmt.Errorf("parse journal header: no magic (%x): %w", b[:8], ErrJournalNotHot)
	}
	be := binary.BigEndian
	h := JournalHeader{
		NRec:       be.Uint32(b[8:]),
		Nonce:      be.Uint32(b[12:]),
		DBSize:     be.Uint32(b[16:]),
		SectorSize: be.Uint32(b[20:]),
		PageSize:   be.Uint32(b[24:]),
	}
	if !isValidPageSize(h.PageSize) {
		return JournalHeader{}, fmt.Errorf("parse journal header: page size %d: %w", h.PageSize, ErrJournalNotHot)
	}
	if h.SectorSize < 32 || h.SectorSize > maxSectorSize || h.SectorSize&(h.SectorSize-1) != 0 {
		return JournalHeader{}, fmt.Errorf("parse journal header: sector size %d: %w", h.SectorSize, ErrJournalNotHot)
	}
	return h, nil
}

// JournalRecord is one page image saved in a journal.
type JournalRecord struct {
	Pgno   uint32
	Offset int64 // offset of the page data (after the 4-byte page number)
}

// JournalScan is what SQLite's hot-journal rollback would play back.
type JournalScan struct {
	// Header is the first segment's header. A rollback truncates the
	// database to Header.DBSize pages even when there are no records.
	Header JournalHeader
	// Records are the valid records of every segment in file order, which
	// is the order SQLite writes them back. Records for pages past
	// Header.DBSize are left out, as SQLite skips them (unchecked): the
	// truncation discards those pages anyway.
	Records []JournalRecord
}

// ScanJournal reads every segment of a hot journal (segments start at
// sector-size aligned offsets; nRec 0xffffffff means "to end of file"; nRec
// 0 means an empty segment, as in SQLite's hot-journal rollback), verifying
// each record's checksum (nonce plus every 200th byte from the end as SQLite
// does), stopping at the first invalid record or header. A record with page
// number 0 or the lock-byte page ends the scan as invalid (the latter marks a
// super-journal name). A journal that is not hot gives an empty scan and
// ErrJournalNotHot. Any other error is an I/O failure. Super-journals
// (multi-database transactions) are not followed.
func ScanJournal(r io.ReaderAt, size int64) (*JournalScan, error) {
	s := &JournalScan{}
	cr := newChunkReader(r, size)
	b, ok, err := cr.at(0, journalHeaderFields)
	if err != nil {
		return nil, fmt.Errorf("scan journal header: %w", err)
	}
	if !ok {
		return s, fmt.Errorf("scan journal: %d bytes: %w", size, ErrJournalNotHot)
	}
	hdr, err := ParseJournalHeader(b)
	if err != nil {
		return s, fmt.Errorf("scan journal: %w", err)
	}
	sector := int64(hdr.SectorSize)
	if sector > size {
		return s, fmt.Errorf("scan journal: %d-byte header past end of %d-byte file: %w", sector, size, ErrJournalNotHot)
	}
	s.Header = hdr
	ps := int(hdr.PageSize)
	recSize := int64(ps) + 8
	lockPgno := uint32(pendingByte/hdr.PageSize) + 1
	nrec, nonce := hdr.NRec, hdr.Nonce
	off := sector // first record
	for {
		if nrec == journalNRecToEOF {
			nrec = uint32(min((size-off)/recSize, journalNRecToEOF-1))
		}
		for range nrec {
			b, ok, err := cr.at(off, int(recSize))
			if err != nil {
				return nil, fmt.Errorf("scan journal record at %d: %w", off, err)
			}
			if !ok {
				return s, nil // short: the journal was not completely written
			}
			pgno := binary.BigEndian.Uint32(b)
			if pgno == 0 || pgno == lockPgno {
				return s, nil
			}
			if pgno <= hdr.DBSize {
				if journalChecksum(nonce, b[4:4+ps]) != binary.BigEndian.Uint32(b[4+ps:]) {
					return s, nil
				}
				s.Records = append(s.Records, JournalRecord{Pgno: pgno, Offset: off + 4})
			}
			off += recSize
		}
		// The next segment header is at the next sector boundary and must
		// fit whole in the file.
		off = (off + sector - 1) / sector * sector
		if off+sector > size {
			return s, nil
		}
		b, ok, err := cr.at(off, 16)
		if err != nil {
			return nil, fmt.Errorf("scan journal header at %d: %w", off, err)
		}
		if !ok || !bytes.Equal(b[:8], JournalMagic[:]) {
			return s, nil
		}
		nrec, nonce = binary.BigEndian.Uint32(b[8:]), binary.BigEndian.Uint32(b[12:])
		off += sector
	}
}

// journalChecksum is SQLite's rollback journal record checksum: nonce plus
// the bytes of data at offsets len-200, len-400, ... down to (not including)
// offset 0.
func journalChecksum(nonce uint32, data []byte) uint32 {
	c := nonce
	for i := len(data) - 200; i > 0; i -= 200 {
		c += uint32(data[i])
	}
	return c
}
