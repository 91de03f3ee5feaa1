package pager

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// dbHeaderBytes builds a 100-byte database header with the given raw page
// size field and counters.
func dbHeaderBytes(rawPageSize uint16, change, pages, validFor uint32) []byte {
	b := make([]byte, DBHeaderSize)
	copy(b, dbMagic)
	binary.BigEndian.PutUint16(b[16:], rawPageSize)
	b[18], b[19] = 2, 2
	b[21], b[22], b[23] = 64, 32, 32
	binary.BigEndian.PutUint32(b[24:], change)
	binary.BigEndian.PutUint32(b[28:], pages)
	binary.BigEndian.PutUint32(b[92:], validFor)
	return b
}

func TestParseDBHeader(t *testing.T) {
	tests := []struct {
		name     string
		b        []byte
		pageSize uint32 // 0: invalid
	}{
		{"4096", dbHeaderBytes(4096, 3, 10, 3), 4096},
		{"512", dbHeaderBytes(512, 3, 10, 3), 512},
		{"32768", dbHeaderBytes(32768, 3, 10, 3), 32768},
		{"1 means 65536", dbHeaderBytes(1, 3, 10, 3), 65536},
		{"whole page", append(dbHeaderBytes(4096, 3, 10, 3), make([]byte, 3996)...), 4096},
		{"page size 0", dbHeaderBytes(0, 3, 10, 3), 0},
		{"page size 256", dbHeaderBytes(256, 3, 10, 3), 0},
		{"page size 1000", dbHeaderBytes(1000, 3, 10, 3), 0},
		{"page size 2", dbHeaderBytes(2, 3, 10, 3), 0},
		{"truncated", dbHeaderBytes(4096, 3, 10, 3)[:99], 0},
		{"empty", nil, 0},
		{"bad magic", append([]byte("SQLite format 4\x00"), dbHeaderBytes(4096, 3, 10, 3)[16:]...), 0},
		{"magic without NUL", append([]byte("SQLite format 3 "), dbHeaderBytes(4096, 3, 10, 3)[16:]...), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseDBHeader(tt.b)
			if tt.pageSize == 0 {
				if !errors.Is(err, ErrNotDatabase) {
					t.Fatalf("err = %v, want ErrNotDatabase", err)
				}
				return
			}
			want := DBHeader{PageSize: tt.pageSize, WriteVersion: 2, ReadVersion: 2, ChangeCounter: 3, PageCount: 10, VersionValidFor: 3}
			if err != nil || h != want {
				t.Fatalf("got %+v, %v; want %+v", h, err, want)
			}
		})
	}
}

func TestIsDBHeader(t *testing.T) {
	for b, want := range map[string]bool{
		"SQLite format 3\x00":          true,
		"SQLite format 3\x00 and more": true,
		"SQLite format 3":              false,
		"":                             false,
		"sqlite format 3\x00":          false,
	} {
		if got := IsDBHeader([]byte(b)); got != want {
			t.Errorf("IsDBHeader(%q) = %v", b, got)
		}
	}
}

func TestPageCountValid(t *testing.T) {
	for _, tt := range []struct {
		change, pages, validFor uint32
		want                    bool
	}{
		{3, 10, 3, true},
		{3, 10, 2, false}, // written by a pre-3.7.0 SQLite since
		{3, 0, 3, false},
		{0, 1, 0, true},
	} {
		h, err := ParseDBHeader(dbHeaderBytes(4096, tt.change, tt.pages, tt.validFor))
		if err != nil {
			t.Fatal(err)
		}
		if got := h.PageCountValid(); got != tt.want {
			t.Errorf("%+v: PageCountValid = %v, want %v", tt, got, tt.want)
		}
	}
}

// TestParseDBHeaderSQLite reads the header of a database written by SQLite.
func TestParseDBHeaderSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "test.db")
	db := openSQLite(t, path, "PRAGMA page_size=8192", "PRAGMA journal_mode=WAL")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	insertRows(t, db, 50, 1000)
	mustExec(t, db, "PRAGMA wal_checkpoint(TRUNCATE)")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ParseDBHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	pages := queryInt(t, db, "PRAGMA page_count")
	if h.PageSize != 8192 || h.WriteVersion != 2 || h.ReadVersion != 2 || !h.PageCountValid() || int64(h.PageCount) != pages {
		t.Fatalf("header %+v, page_count %d", h, pages)
	}
}

func FuzzParseDBHeader(f *testing.F) {
	f.Add(dbHeaderBytes(4096, 3, 10, 3))
	f.Add(dbHeaderBytes(1, 0, 0, 0))
	f.Add([]byte(dbMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseDBHeader(b)
		if err != nil {
			if !errors.Is(err, ErrNotDatabase) {
				t.Fatalf("err %v does not wrap ErrNotDatabase", err)
			}
			return
		}
		if !IsDBHeader(b) || !isValidPageSize(h.PageSize) || len(b) < DBHeaderSize {
			t.Fatalf("accepted %+v from %d bytes", h, len(b))
		}
		raw := uint16(h.PageSize)
		if h.PageSize == 65536 {
			raw = 1
		}
		if !bytes.Equal(b[16:18], binary.BigEndian.AppendUint16(nil, raw)) {
			t.Fatalf("page size %d from field %x", h.PageSize, b[16:18])
		}
	})
}
