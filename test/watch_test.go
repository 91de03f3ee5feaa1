package test

import (
	"database/sql"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
)

// TestWatchCheckpointRace writes a stream of commits in WAL mode while SQLite
// checkpoints after every few pages, so the WAL restarts over frames sqlfs
// reads back after the fact (watch mode) — once as it runs, once with the
// inotify watcher slowed down (fault injection) so that nearly every commit
// reaches history only through the catch-up a checkpoint's first database
// write waits for. Every commit must still arrive as its own TXID, with
// nothing skipped: the state at TXID base+i holds exactly the first i rows,
// for every i sampled, and the latest state equals the database.
func TestWatchCheckpointRace(t *testing.T) {
	needE2E(t)
	for _, delay := range []string{"0s", "20ms"} {
		t.Run("watcher-delay-"+delay, func(t *testing.T) {
			t.Parallel()
			runCheckpointRace(t, delay)
		})
	}
}

func runCheckpointRace(t *testing.T, delay string) {
	data, mnt := newDirs(t)
	m := startMountEnv(t, []string{"SQLFS_TEST_WATCH_DELAY=" + delay}, data, mnt)
	const name = "app.db"
	// synchronous=OFF: no fsync of the WAL before a checkpoint, which would
	// also make sqlfs catch up; only the checkpoint's database writes do.
	db := openDB(t, m.Path(name), "_journal_mode=WAL&_synchronous=OFF")
	mustExec := func(db *sql.DB, q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	mustExec(db, "PRAGMA wal_autocheckpoint=4")
	mustExec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
	base := waitTXID(t, data, name, 2) // the switch to WAL and CREATE TABLE
	if base != 2 {
		t.Fatalf("history ends at TXID %d after setup, want 2", base)
	}
	const n = 1500
	for i := 1; i <= n; i++ {
		mustExec(db, "INSERT INTO t(id, v) VALUES (?, randomblob(?))", i, 50+i%300)
	}
	want := dbState(t, m.Path(name))
	db.Close() // the last connection checkpoints and removes the WAL
	checkHistory(t, data, name, base+n)

	latest := filepath.Join(t.TempDir(), "latest.db")
	restore(t, data, name, 0, latest)
	integrityCheck(t, latest)
	if got := dbState(t, latest); got != want {
		t.Fatal("latest restore differs from the database")
	}
	rng := rand.New(rand.NewPCG(7, 7))
	for range 8 {
		i := 1 + rng.IntN(n)
		out := filepath.Join(t.TempDir(), fmt.Sprintf("at-%d.db", i))
		restore(t, data, name, base+uint64(i), out)
		r := openDB(t, out, "")
		var count, maxID int
		if err := r.QueryRow("SELECT count(*), coalesce(max(id), 0) FROM t").Scan(&count, &maxID); err != nil {
			t.Fatal(err)
		}
		r.Close()
		if count != i || maxID != i {
			t.Errorf("TXID %d: %d rows up to id %d, want exactly the first %d", base+uint64(i), count, maxID, i)
		}
	}
	m.Stop()
}
