package pager

import (
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"testing"
)

// TestWatchModeCatchUp drives real SQLite on a plain directory and captures
// its WAL in watch mode: no write is reported, CatchUp reads the commits back
// from the file at random moments (always before a checkpoint, as the mount
// does). Every commit must come out as its own TXID, equal to what SQLite saw
// right after it — including transactions that spilled, rolled-back spilled
// transactions whose stale frames stay in the WAL, and WAL restarts.
func TestWatchModeCatchUp(t *testing.T) {
	for _, pageSize := range []int{1024, 4096} {
		t.Run(strconv.Itoa(pageSize), func(t *testing.T) {
			testWatchMode(t, pageSize)
		})
	}
}

func testWatchMode(t *testing.T, pageSize int) {
	path := filepath.Join(t.TempDir(), "app.db")
	pragmas := []string{"PRAGMA page_size=" + strconv.Itoa(pageSize), "PRAGMA journal_mode=WAL",
		"PRAGMA wal_autocheckpoint=0", "PRAGMA cache_size=10"}
	first := openSQLite(t, path, pragmas...)
	mustExec(t, first, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	insertRows(t, first, 20, 100)
	want := []string{tableDigest(t, first)} // want[i] is the state at TXID i+1
	first.Close()

	sink := &memSink{}
	db, err := Open(Config{Name: "app.db", Path: path, Sink: sink, Log: slog.Default(), Watch: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close("")
	live := openSQLite(t, path, pragmas[1:]...)

	var pending []string // digests of commits not yet caught up
	catchUp := func() {
		t.Helper()
		before := db.Pos().TXID
		if err := db.CatchUp(); err != nil {
			t.Fatal(err)
		}
		if got := int(db.Pos().TXID - before); got != len(pending) {
			t.Fatalf("catch-up recorded %d commits, SQLite made %d", got, len(pending))
		}
		want, pending = append(want, pending...), pending[:0]
	}
	commit := func(query string, args ...any) {
		t.Helper()
		mustExec(t, live, query, args...)
		pending = append(pending, tableDigest(t, live))
	}
	rng := rand.New(rand.NewPCG(1, uint64(pageSize)))
	for i := range 60 {
		switch i % 10 {
		case 0, 1, 2:
			commit("INSERT INTO t(v) VALUES (randomblob(?))", 50+rng.IntN(200))
		case 3:
			// Spills: far more dirty pages than cache_size.
			commit(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 300)
				INSERT INTO t(v) SELECT randomblob(300) FROM n`)
		case 4:
			// A spilled transaction rolled back leaves valid-looking frames
			// past the last commit; the next, shorter one overwrites some.
			mustExec(t, live, "BEGIN")
			mustExec(t, live, `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 400)
				INSERT INTO t(v) SELECT randomblob(300) FROM n`)
			mustExec(t, live, "ROLLBACK")
			commit("UPDATE t SET v = randomblob(10) WHERE id = (SELECT max(id) FROM t)")
		case 5:
			commit("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT ?)", 1+rng.IntN(50))
		case 6:
			catchUp()
			mustExec(t, live, "PRAGMA wal_checkpoint(PASSIVE)")
		case 7:
			catchUp()
			mustExec(t, live, "PRAGMA wal_checkpoint(TRUNCATE)")
		case 8:
			catchUp()
			// A full checkpoint, after which the next write restarts the
			// WAL with new salts over the old frames.
			mustExec(t, live, "PRAGMA wal_checkpoint(RESTART)")
			commit("INSERT INTO t(v) VALUES (randomblob(20))")
		case 9:
			commit("VACUUM")
		}
		if rng.IntN(3) == 0 {
			catchUp()
		}
	}
	catchUp()
	if len(sink.files) != len(want) {
		t.Fatalf("%d LTX files, %d commits", len(sink.files), len(want))
	}
	for i := range want {
		if got := digestOf(t, sink.restore(t, i+1)); got != want[i] {
			t.Fatalf("txid %d: restored state differs from what SQLite saw", i+1)
		}
	}
}
