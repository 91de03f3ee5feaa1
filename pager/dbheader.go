// Package pager holds SQLite's on-disk formats (database header, WAL, rollback
// journal) and the capture of commits from the writes SQLite makes to them.
// It imports no FUSE or network code: it takes bytes and file events and
// returns values.
package pager

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// DBHeaderSize is the size of the header at the start of page 1 of every
// SQLite database file.
const DBHeaderSize = 100

// dbMagic is the header string every SQLite 3 database file starts with.
const dbMagic = "SQLite format 3\x00"

// ErrNotDatabase is returned (wrapped) by ParseDBHeader when the bytes are not
// the header of a SQLite database file SQLite would open.
var ErrNotDatabase = errors.New("not a SQLite database")

// DBHeader holds the fields of the 100-byte database header that the pager
// needs. All multi-byte fields are big-endian on disk.
type DBHeader struct {
	PageSize        uint32 // bytes; header value 1 means 65536
	WriteVersion    uint8  // byte 18: 1 legacy/rollback, 2 WAL
	ReadVersion     uint8  // byte 19
	ChangeCounter   uint32 // offset 24
	PageCount       uint32 // offset 28 ("in-header database size")
	VersionValidFor uint32 // offset 92
}

// IsDBHeader reports whether b starts with the SQLite 3 magic string
// "SQLite format 3\x00". It says nothing about the rest of the header.
func IsDBHeader(b []byte) bool {
	return len(b) >= len(dbMagic) && string(b[:len(dbMagic)]) == dbMagic
}

// ParseDBHeader decodes the database header at the start of b, which must
// hold at least DBHeaderSize bytes. It checks the magic string and that the
// page size is a power of two from 512 to 65536; on failure the error wraps
// ErrNotDatabase. The other fields are returned as found.
func ParseDBHeader(b []byte) (DBHeader, error) {
	if len(b) < DBHeaderSize {
		return DBHeader{}, fmt.Errorf("parse database header: %d bytes, need %d: %w", len(b), DBHeaderSize, ErrNotDatabase)
	}
	if !IsDBHeader(b) {
		return DBHeader{}, fmt.Errorf("parse database header: bad magic %q: %w", b[:len(dbMagic)], ErrNotDatabase)
	}
	raw := binary.BigEndian.Uint16(b[16:18])
	ps := uint32(raw)
	if raw == 1 {
		ps = 65536
	}
	if !isValidPageSize(ps) {
		return DBHeader{}, fmt.Errorf("parse database header: page size field %d: %w", raw, ErrNotDatabase)
	}
	return DBHeader{
		PageSize:        ps,
		WriteVersion:    b[18],
		ReadVersion:     b[19],
		ChangeCounter:   binary.BigEndian.Uint32(b[24:28]),
		PageCount:       binary.BigEndian.Uint32(b[28:32]),
		VersionValidFor: binary.BigEndian.Uint32(b[92:96]),
	}, nil
}

// PageCountValid reports whether PageCount can be trusted (nonzero and
// VersionValidFor == ChangeCounter), as SQLite does. Files last written by
// SQLite before 3.7.0 fail this test; SQLite then takes the database size from
// the file size instead.
func (h DBHeader) PageCountValid() bool {
	return h.PageCount != 0 && h.VersionValidFor == h.ChangeCounter
}

// isValidPageSize reports whether ps is a page size SQLite accepts: a power of
// two from 512 to 65536. The database header, the WAL header and the journal
// header share this rule.
func isValidPageSize(ps uint32) bool {
	return ps >= 512 && ps <= 65536 && ps&(ps-1) == 0
}
