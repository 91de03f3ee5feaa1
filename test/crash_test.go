package test

import (
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestCrash kills sqlfs with SIGKILL in the middle of a stream of commits,
// three times on the same data dir. Each time the next mount must clear the
// stale mount point by itself, every commit that returned to the application
// must be in the database, and history must be TXIDs 1..N with no gap and
// restore to exactly what SQLite sees.
func TestCrash(t *testing.T) {
	needE2E(t)
	for _, v := range []struct {
		name, params string
		setup        uint64 // commits made by opening a new database with params
	}{
		{"WAL-NORMAL", "_journal_mode=WAL&_synchronous=NORMAL", 1},
		{"DELETE-FULL", "_journal_mode=DELETE&_synchronous=FULL", 0},
	} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			runCrash(t, v.params, v.setup)
		})
	}
}

func runCrash(t *testing.T, params string, setup uint64) {
	data, mnt := newDirs(t)
	const name = "app.db"
	m := startMount(t, data, mnt)

	db := openDB(t, m.Path(name), params)
	if _, err := db.Exec(`CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	setup++ // CREATE TABLE

	var acked []int // ids whose INSERT returned without error, all rounds
	next := 1
	for round := 1; round <= 3; round++ {
		db := openDB(t, m.Path(name), params)
		ids, lastErr := writeUntilKilled(t, db, m, next)
		db.Close()
		if len(ids) == 0 {
			t.Fatalf("round %d: no commit returned before the kill (writer error: %v)", round, lastErr)
		}
		acked = append(acked, ids...)
		next = ids[len(ids)-1] + 2 // the id after the one in flight at the kill

		m = remountAfterCrash(t, data, mnt, round)
		ok := t.Run(fmt.Sprintf("round-%d", round), func(t *testing.T) {
			checkAfterCrash(t, data, name, m.Path(name), acked, setup, lastErr)
		})
		if !ok {
			break
		}
	}
	m.Stop()
}

// checkAfterCrash checks the live database and history after a crash and
// remount: every acknowledged commit present, history 1..N with no gap,
// where N is setup + one commit per row, and latest restores to the live state.
func checkAfterCrash(t *testing.T, data, name, live string, acked []int, setup uint64, writerErr error) {
	present := idsIn(t, live)
	var missing []int
	for _, id := range acked {
		if _, ok := slices.BinarySearch(present, id); !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d acknowledged commits missing after remount, e.g. ids %v (writer stopped with: %v)",
			len(missing), len(acked), missing[:min(len(missing), 10)], writerErr)
	}
	integrityCheck(t, live)

	checkHistory(t, data, name, setup+uint64(len(present)))
	out := filepath.Join(t.TempDir(), "latest.db")
	restore(t, data, name, 0, out)
	integrityCheck(t, out)
	if got, want := dbState(t, out), dbState(t, live); got != want {
		t.Errorf("restore of latest (TXID %d) has state %.12s, the live database %.12s",
			lastTXID(t, data, name), got, want)
	}
}

// remountAfterCrash mounts again at once, as a supervisor restarting sqlfs
// would: sqlfs must clear the stale mount point itself. If it refuses, the
// test fails but goes on, once the stale mount answers ENOTCONN even to stat,
// to check recovery.
func remountAfterCrash(t *testing.T, data, mnt string, round int) *Mount {
	t.Helper()
	m, err := tryStartMount(t, data, mnt)
	if err == nil {
		return m
	}
	var statErr error
	_, statErr = os.Stat(mnt)
	t.Errorf("round %d: remount right after the crash failed (stat of the stale mount point: %v): %v", round, statErr, err)
	waitFor(10*time.Second, func() bool { _, err := os.Stat(mnt); return errors.Is(err, syscall.ENOTCONN) })
	return startMount(t, data, mnt)
}

// writeUntilKilled inserts rows with ids first, first+1, ... one commit each,
// and kills sqlfs with SIGKILL after a second and at least 50 commits. It
// returns the ids whose INSERT returned without error, and the error that
// stopped the writer.
func writeUntilKilled(t *testing.T, db *sql.DB, m *Mount, first int) ([]int, error) {
	t.Helper()
	var (
		mu   sync.Mutex
		ids  []int
		werr error
		done = make(chan struct{})
		stop = make(chan struct{})
	)
	go func() {
		defer close(done)
		for id := first; ; id++ {
			select {
			case <-stop:
				return
			default:
			}
			_, err := db.Exec(`INSERT INTO t(id, v) VALUES (?, randomblob(100))`, id)
			mu.Lock()
			if err != nil {
				werr = err
				mu.Unlock()
				return
			}
			ids = append(ids, id)
			mu.Unlock()
		}
	}()
	defer func() { close(stop); <-done }()

	start := time.Now()
	ok := waitFor(30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return werr != nil || (len(ids) >= 50 && time.Since(start) > time.Second)
	})
	mu.Lock()
	n, err := len(ids), werr
	mu.Unlock()
	if !ok || err != nil {
		t.Fatalf("writer before the kill: %d commits, error %v", n, err)
	}
	m.Kill9()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("writer still running 30 s after sqlfs was killed")
	}
	mu.Lock()
	defer mu.Unlock()
	if werr == nil {
		t.Fatalf("writer stopped without an error after sqlfs was killed")
	}
	return ids, werr
}

// idsIn returns the ids in table t of the database at path, ascending.
func idsIn(t *testing.T, path string) []int {
	t.Helper()
	db := openDB(t, path, "")
	defer db.Close()
	rows, err := db.Query(`SELECT id FROM t ORDER BY id`)
	if err != nil {
		t.Fatalf("read ids from %s: %v", path, err)
	}
	defer rows.Close()
	var ids []int
	for rows.Next() {
		var id int
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read ids from %s: %v", path, err)
	}
	return ids
}
