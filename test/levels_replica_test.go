package test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/superfly/ltx"

	"github.com/sqlfs/sqlfs/ship"
)

// replicaLevelFlags make levels, snapshots and retention of a replica happen
// within a test: single commits are kept 4 s, history 20 s.
var replicaLevelFlags = []string{"-levels", "1s,3s", "-snapshot-interval", "5s", "-retention-l0", "4s", "-retention", "20s"}

// writePaced commits one single-row insert every pace for d through a real
// mount that replicates to url, and returns the history as the replica
// holds it.
func writePaced(t *testing.T, m *Mount, url string, d, pace time.Duration) *levelHistory {
	t.Helper()
	rep, err := ship.OpenReplica(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	h := &levelHistory{t: t, m: m, data: m.Data, url: url, replica: rep, files: rep}
	db := openDB(t, m.Path("app.db"), "_journal_mode=WAL")
	defer db.Close()
	if _, err := db.Exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v)"); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool { h.base = h.last(); return h.base >= 2 }) {
		t.Fatalf("replica has %d commits after CREATE TABLE", h.base)
	}
	h.at = []time.Time{{}}
	start := time.Now()
	for time.Since(start) < d {
		if _, err := db.Exec("INSERT INTO t(v) VALUES (?)", h.n+1); err != nil {
			t.Fatal(err)
		}
		h.n++
		h.at = append(h.at, time.Now())
		time.Sleep(pace)
	}
	h.done = time.Now()
	t.Logf("%d commits in %s", h.n, h.done.Sub(start).Round(time.Millisecond))
	return h
}

// countRows is the row count of table t in a restored database.
func countRows(t *testing.T, path string) int {
	t.Helper()
	db := openDB(t, path, "mode=ro")
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}

// replicaFiles counts the replica's files of app.db per level.
func (h *levelHistory) replicaFiles() (total int, perLevel map[int]int) {
	perLevel = map[int]int{}
	for level := 0; level <= ship.SnapshotLevel; level++ {
		files, err := h.files.LTXFiles(context.Background(), "app.db", level)
		if err != nil {
			h.t.Fatal(err)
		}
		if len(files) > 0 {
			perLevel[level] = len(files)
			total += len(files)
		}
	}
	return total, perLevel
}

// checkReplicaLevels is what a user of a replica with levels relies on:
// the latest state, every commit of the level-0 window, the boundaries of
// older history (and a clear refusal between them), and a bounded number of
// files.
func checkReplicaLevels(t *testing.T, h *levelHistory) {
	end := h.base + uint64(h.n)
	if !waitFor(30*time.Second, func() bool { return h.last() == end }) {
		t.Fatalf("replica history ends at %x, want %x", h.last(), end)
	}
	// Commits of the last second are in the 4 s level-0 window.
	for i := h.n; i >= 1 && h.done.Sub(h.at[i]) < time.Second; i -= max(1, h.n/50) {
		h.checkExact(h.base+uint64(i), "in the level-0 window")
	}

	// The latest state equals the live database.
	out := filepath.Join(t.TempDir(), "app.db") // restore takes the name from -o
	if r := runSqlfs(t, "restore", "-o", out, h.url); r.code != 0 {
		t.Fatalf("restore latest: exit %d: %s", r.code, r.stderr)
	}
	if got, want := dbState(t, out), dbState(t, h.m.Path("app.db")); got != want {
		t.Fatalf("latest restore differs from the live database:\n%s\nwant\n%s", got, want)
	}

	// Once retention has cut level 0, an early commit is no longer
	// restorable on its own: restore says so, names the nearest TXIDs that
	// are, and those restore exactly.
	early := h.base + 3
	if !waitFor(30*time.Second, func() bool {
		files, err := h.files.LTXFiles(context.Background(), "app.db", 0)
		return err == nil && len(files) > 0 && uint64(files[0].MinTXID) > early
	}) {
		t.Fatal("retention did not cut level 0 of the replica within 30 s")
	}
	_, _, errText := h.restoreAt(early)
	if errText == "" {
		t.Fatalf("txid %x restored although level 0 no longer holds it", early)
	}
	m := nearestRE.FindStringSubmatch(errText)
	if m == nil || !strings.Contains(errText, fmt.Sprintf("txid %016x not found", early)) {
		t.Fatalf("restore of txid %x said %q, want the nearest restorable txids", early, errText)
	}
	for _, s := range m[1:] {
		if s == "" {
			continue
		}
		near, _ := strconv.ParseUint(s, 16, 64)
		if near < h.oldest() {
			continue // cut by retention since the message
		}
		h.checkExact(near, fmt.Sprintf("nearest restorable txid to %x", early))
	}

	// With writes stopped, retention brings level 0 down to its newest
	// file and the levels above to their retention.
	var total int
	var per map[int]int
	if !waitFor(30*time.Second, func() bool { total, per = h.replicaFiles(); return per[0] <= 2 && total <= 60 }) {
		t.Fatalf("replica holds %d files after retention (per level %v) for %d commits", total, per, h.n)
	}
	t.Logf("replica holds %d files (per level %v) for %d commits", total, per, h.n)
	h.checkExact(0, "latest after retention")

	// Restore by time still works for a time before level 0's window: it
	// gets the last level boundary at or before that time.
	mid := h.n / 2
	out = filepath.Join(t.TempDir(), "app.db")
	r := runSqlfs(t, "restore", "-o", out, "-timestamp", h.at[mid].UTC().Format(time.RFC3339Nano), h.url)
	if r.code != 0 {
		t.Fatalf("restore -timestamp of commit %d (before level 0's window): exit %d: %s", mid, r.code, r.stderr)
	}
	tm := regexp.MustCompile(`at txid ([0-9a-f]{16})`).FindStringSubmatch(r.stdout + r.stderr)
	if tm == nil {
		t.Fatalf("restore -timestamp said %q", r.stdout+r.stderr)
	}
	got, _ := strconv.ParseUint(tm[1], 16, 64)
	if got > h.base+uint64(mid) || got < h.oldest() {
		t.Fatalf("restore -timestamp of txid %x's time restored txid %x", h.base+uint64(mid), got)
	}
	if rows := countRows(t, out); rows != h.rows(got) {
		t.Fatalf("restore -timestamp: txid %x has %d rows, want %d", got, rows, h.rows(got))
	}
}

func TestLevelsReplicaFile(t *testing.T) {
	needE2E(t)
	data, mnt := newDirs(t)
	url := "file://" + filepath.Join(t.TempDir(), "replica")
	m := startMount(t, data, mnt, append([]string{"-replica", url}, replicaLevelFlags...)...)
	h := writePaced(t, m, url, 10*time.Second, 10*time.Millisecond)
	checkReplicaLevels(t, h)
}

func TestLevelsReplicaS3(t *testing.T) {
	needE2E(t)
	_, url, data, mnt := newS3Replica(t, "levels")
	m := startMount(t, data, mnt, append([]string{"-replica", url}, replicaLevelFlags...)...)
	h := writePaced(t, m, url, 10*time.Second, 10*time.Millisecond)
	checkReplicaLevels(t, h)
}

// TestLevelsCrashS3 kills sqlfs with SIGKILL at moments that fall, round
// after round, on the replica's compaction, snapshot and retention passes
// (every second here) as well as on uploads, and mounts again at once. No
// pass cut short may leave the replica inconsistent: every file in it
// decodes and verifies, its history chains from the first commit, and the
// latest state it restores is the live database with every acknowledged
// commit.
func TestLevelsCrashS3(t *testing.T) {
	needE2E(t)
	_, url, data, mnt := newS3Replica(t, "crash")
	flags := append([]string{"-replica", url}, replicaLevelFlags...)
	m := startMount(t, data, mnt, flags...)
	const params = "_journal_mode=WAL&_synchronous=NORMAL"
	db := openDB(t, m.Path("app.db"), params)
	if _, err := db.Exec(`CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	var acked []int
	next := 1
	for round := 1; round <= 5; round++ {
		// A random pause first, so the kill falls at a different point of
		// the passes' one-second cycle each round.
		time.Sleep(time.Duration(rand.IntN(1000)) * time.Millisecond)
		db := openDB(t, m.Path("app.db"), params)
		ids, _ := writeUntilKilled(t, db, m, next)
		db.Close()
		acked = append(acked, ids...)
		next = ids[len(ids)-1] + 2
		var err error
		if m, err = tryStartMount(t, data, mnt, flags...); err != nil {
			t.Fatalf("round %d: remount after the kill: %v", round, err)
		}
	}
	present := idsIn(t, m.Path("app.db"))
	for _, id := range acked {
		if _, ok := slices.BinarySearch(present, id); !ok {
			t.Fatalf("acknowledged id %d missing from the live database after 5 kills", id)
		}
	}
	want := lastTXID(t, data, "app.db")
	rep, err := ship.OpenReplica(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	h := &levelHistory{t: t, replica: rep}
	if !waitSlow(60*time.Second, func() bool { return h.last() == want }) {
		t.Fatalf("replica history ends at %x, the data dir's at %x", h.last(), want)
	}
	// Let a few more passes run over what the kills left, then check
	// every file the replica holds.
	time.Sleep(3 * time.Second)
	files := 0
	for level := 0; level <= ship.SnapshotLevel; level++ {
		infos, err := rep.LTXFiles(context.Background(), "app.db", level)
		if err != nil {
			t.Fatal(err)
		}
		for _, fi := range infos {
			rc, err := rep.OpenLTX(context.Background(), "app.db", level, fi.MinTXID, fi.MaxTXID)
			if err != nil {
				t.Fatal(err)
			}
			err = ltx.NewDecoder(rc).Verify()
			rc.Close()
			if err != nil {
				t.Fatalf("%s in the replica: %v", ship.LTXPath("app.db", level, fi.MinTXID, fi.MaxTXID), err)
			}
			files++
		}
	}
	out := filepath.Join(t.TempDir(), "app.db")
	if res := runSqlfs(t, "restore", "-o", out, "-integrity-check", url); res.code != 0 {
		t.Fatalf("restore from the replica: exit %d: %s", res.code, res.stderr)
	}
	if got, live := dbState(t, out), dbState(t, m.Path("app.db")); got != live {
		t.Fatalf("restore of the replica's latest state differs from the live database")
	}
	t.Logf("%d acknowledged commits over 5 kills; %d files in the replica verify; latest restores", len(acked), files)
	m.Stop()
}
