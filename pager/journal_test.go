package pager

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// jrec is one record of a test journal.
type jrec struct {
	pgno   uint32
	badSum bool
}

// jseg is one segment of a test journal.
type jseg struct {
	noMagic bool
	nrec    *uint32 // nil: len(recs)
	nonce   uint32
	dbSize  uint32
	recs    []jrec
}

func u32(v uint32) *uint32 { return &v }

// testPage is the page image a test journal saves for pgno.
func testPage(ps int, pgno uint32) []byte {
	p := make([]byte, ps)
	for i := range p {
		p[i] = byte(pgno*31) + byte(i*13)
	}
	return p
}

// buildJournal lays out segments as SQLite does: each header padded to the
// sector size at a sector-aligned offset, records packed after it.
func buildJournal(ps, sector uint32, segs ...jseg) []byte {
	var b []byte
	for _, s := range segs {
		if pad := len(b) % int(sector); pad != 0 {
			b = append(b, make([]byte, int(sector)-pad)...)
		}
		h := make([]byte, max(sector, journalHeaderFields))
		if !s.noMagic {
			copy(h, JournalMagic[:])
		}
		nrec := uint32(len(s.recs))
		if s.nrec != nil {
			nrec = *s.nrec
		}
		for i, v := range []uint32{nrec, s.nonce, s.dbSize, sector, ps} {
			binary.BigEndian.PutUint32(h[8+4*i:], v)
		}
		b = append(b, h...)
		for _, r := range s.recs {
			page := testPage(int(ps), r.pgno)
			sum := journalChecksum(s.nonce, page)
			if r.badSum {
				sum++
			}
			b = binary.BigEndian.AppendUint32(b, r.pgno)
			b = append(b, page...)
			b = binary.BigEndian.AppendUint32(b, sum)
		}
	}
	return b
}

func TestParseJournalHeader(t *testing.T) {
	valid := buildJournal(4096, 512, jseg{nonce: 0xabcdef01, dbSize: 9, recs: []jrec{{1, false}}})
	h, err := ParseJournalHeader(valid)
	want := JournalHeader{NRec: 1, Nonce: 0xabcdef01, DBSize: 9, SectorSize: 512, PageSize: 4096}
	if err != nil || h != want {
		t.Fatalf("got %+v, %v; want %+v", h, err, want)
	}
	bad := map[string][]byte{
		"empty":          nil,
		"short":          valid[:27],
		"zero magic":     buildJournal(4096, 512, jseg{noMagic: true, dbSize: 9}),
		"bad magic":      append([]byte{0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd6}, valid[8:]...),
		"page size 0":    buildJournal(0, 512, jseg{dbSize: 9}),
		"page size 1000": buildJournal(1000, 512, jseg{dbSize: 9}),
		"page size 128k": buildJournal(131072, 512, jseg{dbSize: 9}),
		"sector 16":      buildJournal(4096, 16, jseg{dbSize: 9}),
		"sector 128k":    buildJournal(4096, 131072, jseg{dbSize: 9})[:100],
		"sector 1000":    buildJournal(4096, 1000, jseg{dbSize: 9}),
	}
	for name, b := range bad {
		if _, err := ParseJournalHeader(b); !errors.Is(err, ErrJournalNotHot) {
			t.Errorf("%s: err = %v, want ErrJournalNotHot", name, err)
		}
	}
}

func TestScanJournal(t *testing.T) {
	const ps = 1024
	ok := func(pgnos ...uint32) []jrec {
		var rs []jrec
		for _, p := range pgnos {
			rs = append(rs, jrec{pgno: p})
		}
		return rs
	}
	lockPgno := uint32(pendingByte/ps) + 1
	tests := []struct {
		name string
		b    []byte
		hot  bool
		want []uint32
	}{
		{"empty file", nil, false, nil},
		{"zero magic (persist commit)", buildJournal(ps, 512, jseg{noMagic: true, dbSize: 9, recs: ok(1, 2)}), false, nil},
		{"header shorter than sector", buildJournal(ps, 512, jseg{dbSize: 9})[:100], false, nil},
		{"bad page size", buildJournal(3000, 512, jseg{dbSize: 9}), false, nil},
		{"header only", buildJournal(ps, 512, jseg{dbSize: 9}), true, nil},
		{"one segment", buildJournal(ps, 512, jseg{nonce: 5, dbSize: 9, recs: ok(1, 4, 2)}), true, []uint32{1, 4, 2}},
		{"nRec bounds the segment", buildJournal(ps, 512, jseg{nrec: u32(2), nonce: 5, dbSize: 9, recs: ok(1, 4, 2)}), true, []uint32{1, 4}},
		{"nRec to end of file", buildJournal(ps, 512, jseg{nrec: u32(0xffffffff), nonce: 5, dbSize: 9, recs: ok(1, 4, 2)}), true, []uint32{1, 4, 2}},
		{"nRec past end of file", buildJournal(ps, 512, jseg{nrec: u32(7), nonce: 5, dbSize: 9, recs: ok(1, 4, 2)}), true, []uint32{1, 4, 2}},
		{"truncated record", buildJournal(ps, 512, jseg{nonce: 5, dbSize: 9, recs: ok(1, 4, 2)})[:512+3*(ps+8)-1], true, []uint32{1, 4}},
		{"bad checksum stops", buildJournal(ps, 512,
			jseg{nonce: 5, dbSize: 9, recs: []jrec{{1, false}, {2, true}, {3, false}}},
			jseg{nonce: 6, dbSize: 9, recs: ok(5)}), true, []uint32{1}},
		{"page 0 stops", buildJournal(ps, 512, jseg{nonce: 5, dbSize: 9, recs: ok(1, 0, 2)}), true, []uint32{1}},
		{"lock-byte page stops", buildJournal(ps, 512, jseg{nonce: 5, dbSize: lockPgno + 5, recs: ok(1, lockPgno, 2)}), true, []uint32{1}},
		{"page past original size skipped unchecked", buildJournal(ps, 512,
			jseg{nonce: 5, dbSize: 3, recs: []jrec{{1, false}, {7, true}, {3, false}}}), true, []uint32{1, 3}},
		{"two segments", buildJournal(ps, 512,
			jseg{nonce: 5, dbSize: 9, recs: ok(1, 2, 3)},
			jseg{nonce: 77, dbSize: 12, recs: ok(4, 5)}), true, []uint32{1, 2, 3, 4, 5}},
		{"large sector", buildJournal(ps, 4096,
			jseg{nonce: 5, dbSize: 9, recs: ok(1)},
			jseg{nonce: 6, dbSize: 9, recs: ok(2, 3)},
			jseg{nonce: 7, dbSize: 9, recs: ok(4)}), true, []uint32{1, 2, 3, 4}},
		{"unsynced second segment", buildJournal(ps, 512,
			jseg{nonce: 5, dbSize: 9, recs: ok(1, 2)},
			jseg{noMagic: true, nonce: 6, dbSize: 9, recs: ok(3)}), true, []uint32{1, 2}},
		{"empty segment then records (hot rule)", buildJournal(ps, 512,
			jseg{nonce: 5, dbSize: 9},
			jseg{nonce: 6, dbSize: 9, recs: ok(3)}), true, []uint32{3}},
		{"segment header cut short", buildJournal(ps, 512,
			jseg{nonce: 5, dbSize: 9, recs: ok(1)},
			jseg{nonce: 6, dbSize: 9})[:2*512+ps+8+100], true, []uint32{1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ScanJournal(bytes.NewReader(tt.b), int64(len(tt.b)))
			if tt.hot != (err == nil) {
				t.Fatalf("err = %v, want hot=%v", err, tt.hot)
			}
			if err != nil && !errors.Is(err, ErrJournalNotHot) {
				t.Fatalf("err = %v, want ErrJournalNotHot", err)
			}
			var got []uint32
			for _, r := range s.Records {
				got = append(got, r.Pgno)
				if p := tt.b[r.Offset : r.Offset+ps]; !bytes.Equal(p, testPage(ps, r.Pgno)) {
					t.Fatalf("record %d at %d: wrong page data", r.Pgno, r.Offset)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("records %v, want %v", got, tt.want)
			}
			checkJournalScan(t, s, tt.b)
		})
	}
}

// checkJournalScan checks the invariants of every scan of b.
func checkJournalScan(t *testing.T, s *JournalScan, b []byte) {
	t.Helper()
	if len(s.Records) == 0 {
		return
	}
	ps := int64(s.Header.PageSize)
	var prev int64
	for i, r := range s.Records {
		if r.Offset-4 < int64(s.Header.SectorSize) || r.Offset+ps+4 > int64(len(b)) || i > 0 && r.Offset < prev+ps+8 {
			t.Fatalf("record %+v out of place (previous at %d, size %d)", r, prev, len(b))
		}
		if r.Pgno == 0 || r.Pgno > s.Header.DBSize || binary.BigEndian.Uint32(b[r.Offset-4:]) != r.Pgno {
			t.Fatalf("record %+v: bad page number (db size %d)", r, s.Header.DBSize)
		}
		prev = r.Offset
	}
}

func TestScanJournalIOError(t *testing.T) {
	b := buildJournal(1024, 512, jseg{nonce: 5, dbSize: 9, recs: []jrec{{1, false}}})
	boom := errors.New("boom")
	if _, err := ScanJournal(&countingReader{r: bytes.NewReader(b), fail: boom}, int64(len(b))); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
}

// TestScanJournalSQLite takes a hot journal from real SQLite in the middle of
// a transaction that spilled to the database file, and checks that playing it
// back onto the database file as copied restores the state before the
// transaction.
func TestScanJournalSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "test.db")
	db := openSQLite(t, path, "PRAGMA journal_mode=DELETE", "PRAGMA cache_size=10")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	insertRows(t, db, 300, 1000)
	want := tableDigest(t, db)
	pages := queryInt(t, db, "PRAGMA page_count")

	mustExec(t, db, "BEGIN")
	mustExec(t, db, "UPDATE t SET v = randomblob(1000)")
	insertRows(t, db, 100, 1000) // grows the file past its original size
	journal := readFile(t, path+"-journal")
	dbFile := readFile(t, path)
	mustExec(t, db, "ROLLBACK")

	s, err := ScanJournal(bytes.NewReader(journal), int64(len(journal)))
	if err != nil {
		t.Fatalf("mid-transaction journal: %v", err)
	}
	checkJournalScan(t, s, journal)
	if int64(s.Header.DBSize) != pages || len(s.Records) == 0 {
		t.Fatalf("header %+v, %d records; want db size %d", s.Header, len(s.Records), pages)
	}
	segments := 1
	for i := 1; i < len(s.Records); i++ {
		if s.Records[i].Offset-s.Records[i-1].Offset != int64(s.Header.PageSize)+8 {
			segments++
		}
	}
	if segments < 2 {
		t.Errorf("only %d segment(s) in a spilled transaction's journal", segments)
	}
	ps := int(s.Header.PageSize)
	if len(dbFile) <= int(pages)*ps {
		t.Fatalf("database file %d bytes: the transaction did not spill past %d pages", len(dbFile), pages)
	}
	for _, r := range s.Records {
		copy(dbFile[int(r.Pgno-1)*ps:], journal[r.Offset:r.Offset+int64(ps)])
	}
	dbFile = dbFile[:int(s.Header.DBSize)*ps]
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(copyPath, dbFile, 0o644); err != nil {
		t.Fatal(err)
	}
	cp := openSQLite(t, copyPath)
	if got := tableDigest(t, cp); got != want {
		t.Fatalf("rolled-back copy differs")
	}
	if got := queryInt(t, cp, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check != 'ok'"); got != 0 {
		t.Fatalf("rolled-back copy fails integrity_check")
	}
}

// TestScanJournalSQLitePersist checks that a PERSIST journal left after a
// commit is not hot.
func TestScanJournalSQLitePersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "test.db")
	db := openSQLite(t, path, "PRAGMA journal_mode=PERSIST")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	insertRows(t, db, 20, 500)
	journal := readFile(t, path+"-journal")
	if len(journal) < 512 {
		t.Fatalf("persisted journal has %d bytes", len(journal))
	}
	s, err := ScanJournal(bytes.NewReader(journal), int64(len(journal)))
	if !errors.Is(err, ErrJournalNotHot) || len(s.Records) != 0 {
		t.Fatalf("err = %v, %d records; want ErrJournalNotHot", err, len(s.Records))
	}
}

func FuzzScanJournal(f *testing.F) {
	f.Add(buildJournal(512, 512, jseg{nonce: 5, dbSize: 9, recs: []jrec{{1, false}, {4, false}}}))
	f.Add(buildJournal(512, 32, jseg{nonce: 5, dbSize: 3, recs: []jrec{{1, false}}}, jseg{nonce: 9, dbSize: 9, recs: []jrec{{2, false}}}))
	f.Add(buildJournal(512, 512, jseg{nrec: u32(0xffffffff), nonce: 1, dbSize: 2, recs: []jrec{{2, false}, {1, false}}}))
	f.Add(buildJournal(512, 64, jseg{nrec: u32(0), dbSize: 2}, jseg{dbSize: 2, recs: []jrec{{1, false}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ScanJournal(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if !errors.Is(err, ErrJournalNotHot) || len(s.Records) != 0 {
				t.Fatalf("err = %v with %d records", err, len(s.Records))
			}
			return
		}
		checkJournalScan(t, s, b)
		ps := int64(s.Header.PageSize)
		lockPgno := uint32(pendingByte/s.Header.PageSize) + 1
		next := int64(s.Header.SectorSize) + 4 // where a first-segment record's data would be
		for _, r := range s.Records {
			if r.Pgno == lockPgno {
				t.Fatalf("lock-byte page %d returned", r.Pgno)
			}
			for r.Offset > next && next < int64(s.Header.SectorSize)+int64(s.Header.NRec)*(ps+8) {
				next += ps + 8 // skipped records of pages past the original size
			}
			if r.Offset != next {
				break // first segment done: later nonces are not in the scan
			}
			sum := binary.BigEndian.Uint32(b[r.Offset+ps:])
			if c := journalChecksum(s.Header.Nonce, b[r.Offset:r.Offset+ps]); c != sum {
				t.Fatalf("record %+v: checksum %08x, stored %08x", r, c, sum)
			}
			next += ps + 8
		}
	})
}
