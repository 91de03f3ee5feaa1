package pager

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	_ "github.com/mattn/go-sqlite3"
)

// These tests check the parsers against files written by real SQLite
// (through go-sqlite3), copied while the connection that wrote them is still
// open, as a crash would leave them.

// openSQLite opens path on a single connection, so that nothing is
// checkpointed or closed behind the test's back, and runs the pragmas.
func openSQLite(t *testing.T, path string, pragmas ...string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	for _, p := range pragmas {
		mustExec(t, db, p)
	}
	return db
}

func mustExec(t *testing.T, db *sql.DB, query string, args ...any) {
	t.Helper()
	if _, err := db.Exec(query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func queryInt(t *testing.T, db *sql.DB, query string) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRow(query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// tableDigest hashes every row of table t, in id order.
func tableDigest(t *testing.T, db *sql.DB) string {
	t.Helper()
	rows, err := db.Query("SELECT id, v FROM t ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	h := sha256.New()
	for rows.Next() {
		var id int64
		var v []byte
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		h.Write([]byte{byte(id), byte(id >> 8), byte(len(v)), byte(len(v) >> 8)})
		h.Write(v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func scanBytes(t *testing.T, b []byte) *WALScan {
	t.Helper()
	s, err := ScanWAL(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	checkScan(t, s, int64(len(b)))
	return s
}

func insertRows(t *testing.T, db *sql.DB, n, size int) {
	t.Helper()
	mustExec(t, db, `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < ?)
		INSERT INTO t(v) SELECT randomblob(?) FROM n`, n, size)
}

func TestScanWALSQLite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "test.db")
	db := openSQLite(t, path, "PRAGMA page_size=1024", "PRAGMA journal_mode=WAL", "PRAGMA wal_autocheckpoint=0")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	for range 5 {
		insertRows(t, db, 1, 100)
	}
	insertRows(t, db, 200, 300) // one transaction over many pages
	mustExec(t, db, "BEGIN")
	insertRows(t, db, 10, 100)
	mustExec(t, db, "ROLLBACK")
	mustExec(t, db, "DELETE FROM t WHERE id % 3 = 0")
	const commits = 1 + 5 + 1 + 1

	wal := readFile(t, path+"-wal")
	dbFile := readFile(t, path)
	s := scanBytes(t, wal)
	if !s.Valid || s.Header.PageSize != 1024 {
		t.Fatalf("scan: %+v", s.Header)
	}
	if got := s.Commits(); got != commits {
		t.Fatalf("%d commits, want %d", got, commits)
	}
	last := s.Frames[len(s.Frames)-1]
	if pc := queryInt(t, db, "PRAGMA page_count"); int64(last.Commit) != pc {
		t.Fatalf("last commit field %d, page_count %d", last.Commit, pc)
	}

	// The database file overlaid with the committed frames is the database.
	img := overlay(t, dbFile, wal, s)
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(copyPath, img, 0o644); err != nil {
		t.Fatal(err)
	}
	cp := openSQLite(t, copyPath)
	if got := queryInt(t, cp, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check != 'ok'"); got != 0 {
		t.Fatalf("overlaid copy fails integrity_check")
	}
	if a, b := tableDigest(t, db), tableDigest(t, cp); a != b {
		t.Fatalf("overlaid copy differs: %s vs %s", a, b)
	}

	// Commits appended later are found from the known position.
	insertRows(t, db, 1, 100)
	insertRows(t, db, 50, 500)
	wal2 := readFile(t, path+"-wal")
	next, err := ScanWALFrom(bytes.NewReader(wal2), int64(len(wal2)), s.Header, s.End, s.Checksum1, s.Checksum2)
	if err != nil {
		t.Fatal(err)
	}
	full := scanBytes(t, wal2)
	if next.Commits() != 2 || next.End != full.End || next.Checksum1 != full.Checksum1 || next.Frames[0].N != last.N+1 {
		t.Fatalf("from end: %d commits, end %d (full %d), first frame %d", next.Commits(), next.End, full.End, next.Frames[0].N)
	}
}

// overlay applies the scan's frames to a copy of the database file, in
// order, and sizes it to the last commit, as a checkpoint would.
func overlay(t *testing.T, dbFile, wal []byte, s *WALScan) []byte {
	t.Helper()
	ps := int(s.Header.PageSize)
	img := bytes.Clone(dbFile)
	for _, f := range s.Frames {
		off := int(f.Pgno-1) * ps
		if len(img) < off+ps {
			img = append(img, make([]byte, off+ps-len(img))...)
		}
		copy(img[off:off+ps], wal[f.Offset+WALFrameHeaderSize:])
	}
	if n := len(s.Frames); n > 0 {
		img = img[:int(s.Frames[n-1].Commit)*ps]
	}
	return img
}

func TestScanWALSQLiteSpill(t *testing.T) {
	path := filepath.Join(t.TempDir(), "test.db")
	db := openSQLite(t, path, "PRAGMA journal_mode=WAL", "PRAGMA wal_autocheckpoint=0", "PRAGMA cache_size=10")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	insertRows(t, db, 10, 100)
	before := scanBytes(t, readFile(t, path+"-wal"))

	// A transaction larger than the cache spills uncommitted frames.
	mustExec(t, db, "BEGIN")
	insertRows(t, db, 400, 1000)
	mid := readFile(t, path+"-wal")
	s := scanBytes(t, mid)
	if s.End != before.End || s.Commits() != before.Commits() {
		t.Fatalf("mid-transaction: end %d commits %d, want %d %d", s.End, s.Commits(), before.End, before.Commits())
	}
	if int64(len(mid)) < s.End+10*(4096+24) {
		t.Fatalf("no spilled frames: WAL %d bytes, end %d", len(mid), s.End)
	}
	mustExec(t, db, "COMMIT")
	after := scanBytes(t, readFile(t, path+"-wal"))
	if after.Commits() != before.Commits()+1 {
		t.Fatalf("after commit: %d commits, want %d", after.Commits(), before.Commits()+1)
	}
	tx := after.Frames[len(before.Frames):]
	if len(tx) < 10 || tx[0].Commit != 0 {
		t.Fatalf("spilled transaction has %d frames, first commit %d", len(tx), tx[0].Commit)
	}
}

func TestScanWALSQLiteRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "test.db")
	db := openSQLite(t, path, "PRAGMA journal_mode=WAL", "PRAGMA wal_autocheckpoint=0")
	mustExec(t, db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	for range 5 {
		insertRows(t, db, 3, 2000)
	}
	old := scanBytes(t, readFile(t, path+"-wal"))
	mustExec(t, db, "PRAGMA wal_checkpoint(RESTART)")
	insertRows(t, db, 1, 10)

	wal := readFile(t, path+"-wal")
	s := scanBytes(t, wal)
	if s.Header.CheckpointSeq != old.Header.CheckpointSeq+1 || s.Header.Salt1 != old.Header.Salt1+1 {
		t.Fatalf("new generation header %+v after %+v", s.Header, old.Header)
	}
	if s.Commits() != 1 || int64(len(wal)) <= s.End {
		t.Fatalf("%d commits, end %d of %d: stale frames should remain past the end", s.Commits(), s.End, len(wal))
	}
	// The old position no longer continues: the next frame has new salts.
	if c, _ := ScanWALFrom(bytes.NewReader(wal), int64(len(wal)), old.Header, s.End, s.Checksum1, s.Checksum2); c.Commits() != 0 {
		t.Fatalf("old header matched %d commits of the new generation", c.Commits())
	}
}
