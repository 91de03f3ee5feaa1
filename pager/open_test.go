package pager

import (
	"bytes"
	"database/sql"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/superfly/ltx"
)

// memSink keeps LTX files in memory, in TXID order.
type memSink struct{ files [][]byte }

func (m *memSink) WriteLTX(minTXID, maxTXID ltx.TXID, write func(io.Writer) error, durable bool) error {
	if want := ltx.TXID(len(m.files) + 1); minTXID != want || maxTXID != want {
		return io.ErrUnexpectedEOF
	}
	var b bytes.Buffer
	if err := write(&b); err != nil {
		return err
	}
	m.files = append(m.files, b.Bytes())
	return nil
}

func (m *memSink) Sync() error        { return nil }
func (m *memSink) Acknowledge() error { return nil }

func (m *memSink) last(t *testing.T) *LastFile {
	t.Helper()
	if len(m.files) == 0 {
		return nil
	}
	dec := ltx.NewDecoder(bytes.NewReader(m.files[len(m.files)-1]))
	if err := dec.Verify(); err != nil {
		t.Fatal(err)
	}
	return &LastFile{Header: dec.Header(), Trailer: dec.Trailer()}
}

// restoreMem applies the first n files in order and checks the chain and
// every file's checksum; it returns the database bytes.
func (m *memSink) restore(t *testing.T, n int) []byte {
	t.Helper()
	var db []byte
	var prev ltx.Checksum
	for i, f := range m.files[:n] {
		dec := ltx.NewDecoder(bytes.NewReader(f))
		if err := dec.DecodeHeader(); err != nil {
			t.Fatal(err)
		}
		h := dec.Header()
		if i > 0 && h.PreApplyChecksum != prev {
			t.Fatalf("txid %d: pre-apply checksum %s, previous post-apply %s", h.MinTXID, h.PreApplyChecksum, prev)
		}
		size := int(h.Commit) * int(h.PageSize)
		if len(db) < size {
			db = append(db, make([]byte, size-len(db))...)
		}
		db = db[:size]
		data := make([]byte, h.PageSize)
		var ph ltx.PageHeader
		for {
			if err := dec.DecodePage(&ph, data); err == io.EOF {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			copy(db[int(ph.Pgno-1)*int(h.PageSize):], data)
		}
		if err := dec.Close(); err != nil {
			t.Fatal(err)
		}
		prev = dec.Trailer().PostApplyChecksum
		if got, _ := ltx.ChecksumReader(bytes.NewReader(db), int(h.PageSize)); got != prev {
			t.Fatalf("txid %d: database checksum %s, file says %s", h.MinTXID, got, prev)
		}
	}
	return db
}

// crashCopy copies a database and its WAL as a crash would leave them.
func crashCopy(t *testing.T, src, dir string) string {
	t.Helper()
	dst := filepath.Join(dir, "app.db")
	for _, suffix := range []string{"", "-wal"} {
		b, err := os.ReadFile(src + suffix)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+suffix, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func digestOf(t *testing.T, dbBytes []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "r.db")
	if err := os.WriteFile(path, dbBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	db := openSQLite(t, path)
	if ok := queryString(t, db, "PRAGMA integrity_check"); ok != "ok" {
		t.Fatalf("integrity_check: %s", ok)
	}
	return tableDigest(t, db)
}

func queryString(t *testing.T, db *sql.DB, q string) string {
	t.Helper()
	var s string
	if err := db.QueryRow(q).Scan(&s); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return s
}

// TestOpenRecoversWALCommits: commits that reached the WAL but not history
// (sqlfs killed in between) are recorded at the next Open, one LTX each.
func TestOpenRecoversWALCommits(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src.db")
	live := openSQLite(t, src, "PRAGMA journal_mode=WAL", "PRAGMA wal_autocheckpoint=0")
	mustExec(t, live, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	for range 3 {
		insertRows(t, live, 1, 100)
	}
	// No history: one snapshot of everything committed, WAL included.
	sink := &memSink{}
	path := crashCopy(t, src, t.TempDir())
	db, err := Open(Config{Name: "app.db", Path: path, Sink: sink, Log: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	db.Close("")
	if len(sink.files) != 1 {
		t.Fatalf("%d files after first open, want the snapshot", len(sink.files))
	}
	want1 := tableDigest(t, live)
	if got := digestOf(t, sink.restore(t, 1)); got != want1 {
		t.Fatal("snapshot differs from the database")
	}

	// Two more commits reach the WAL while sqlfs is down.
	insertRows(t, live, 1, 100)
	mid := tableDigest(t, live)
	insertRows(t, live, 50, 300)
	want3 := tableDigest(t, live)
	path = crashCopy(t, src, t.TempDir())
	db, err = Open(Config{Name: "app.db", Path: path, Sink: sink, Log: slog.Default(), Last: sink.last(t)})
	if err != nil {
		t.Fatal(err)
	}
	db.Close("")
	if len(sink.files) != 3 {
		t.Fatalf("%d files after recovery, want 3 (one per WAL commit)", len(sink.files))
	}
	if got := digestOf(t, sink.restore(t, 2)); got != mid {
		t.Fatal("txid 2 differs from the database after its commit")
	}
	if got := digestOf(t, sink.restore(t, 3)); got != want3 {
		t.Fatal("txid 3 differs from the database")
	}

	// Opening again changes nothing: history matches the files.
	db, err = Open(Config{Name: "app.db", Path: path, Sink: sink, Log: slog.Default(), Last: sink.last(t)})
	if err != nil {
		t.Fatal(err)
	}
	db.Close("")
	if len(sink.files) != 3 {
		t.Fatalf("%d files after a clean reopen, want 3", len(sink.files))
	}
}

// TestSavedStateSkipsRead: Close saves page checksums, and the next Open
// uses them instead of reading the database, once.
func TestSavedStateSkipsRead(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.db")
	live := openSQLite(t, path)
	mustExec(t, live, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	insertRows(t, live, 100, 200)
	live.Close()
	sink := &memSink{}
	state := filepath.Join(dir, "state")
	db, err := Open(Config{Name: "app.db", Path: path, Sink: sink, Log: slog.Default(), StatePath: state})
	if err != nil {
		t.Fatal(err)
	}
	pos := db.Pos()
	if err := db.Close(state); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("no saved state: %v", err)
	}
	db2 := &DB{name: "app.db", path: path, log: slog.Default()}
	db2.files.path = path
	if !db2.loadState(state, pos) {
		t.Fatal("saved state not accepted")
	}
	if db2.checksum() != pos.PostApplyChecksum {
		t.Fatal("saved state gives another checksum")
	}
	if _, err := os.Stat(state); err == nil {
		t.Fatal("saved state still there after use")
	}
	// A changed database file is not described by it any more.
	db, _ = Open(Config{Name: "app.db", Path: path, Sink: sink, Log: slog.Default(), StatePath: state, Last: sink.last(t)})
	db.Close(state)
	live = openSQLite(t, path)
	insertRows(t, live, 1, 10)
	live.Close()
	if db2.loadState(state, pos) {
		t.Fatal("stale saved state accepted")
	}
}
