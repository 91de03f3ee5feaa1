package test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/superfly/ltx"

	sqlfsrestore "github.com/sqlfs/sqlfs/restore"
	"github.com/sqlfs/sqlfs/ship"
)

// levelFlags are short intervals that make an hour of levels, snapshots and
// retention happen in seconds.
var levelFlags = []string{"-levels", "1s,3s", "-snapshot-interval", "4s", "-retention-l0", "8s", "-retention", "12s"}

// levelHistory is a database written through a mount with levelFlags: one
// row per commit, so the state at each TXID is known by its row count.
type levelHistory struct {
	t       *testing.T
	m       *Mount
	base    uint64 // the TXID after which commit i holds i rows
	n       int
	done    time.Time // when the last commit returned
	at      []time.Time
	url     string // where restores read: a replica URL, or "" for the data dir
	data    string
	replica ship.Replica // what restores read
	// files is replica without the local store's capture log, which
	// keeps commits that retention removed as files until it is reused.
	files ship.Replica
}

// writeLevelHistory commits n single-row inserts through a real mount.
func writeLevelHistory(t *testing.T, m *Mount, n int) *levelHistory {
	t.Helper()
	db := openDB(t, m.Path("app.db"), "_journal_mode=WAL&_synchronous=OFF")
	defer db.Close()
	if _, err := db.Exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v)"); err != nil {
		t.Fatal(err)
	}
	h := &levelHistory{t: t, m: m, n: n, data: m.Data, at: make([]time.Time, n+1)}
	h.replica = ship.OpenLocal(filepath.Join(m.Data, "ltx"))
	h.files = ship.NewFileReplica(filepath.Join(m.Data, "ltx"))
	if !waitFor(10*time.Second, func() bool { h.base = h.last(); return h.base >= 2 }) {
		t.Fatalf("history has %d commits after CREATE TABLE", h.base)
	}
	start := time.Now()
	for i := 1; i <= n; i++ {
		if _, err := db.Exec("INSERT INTO t(v) VALUES (?)", i); err != nil {
			t.Fatal(err)
		}
		h.at[i] = time.Now()
	}
	h.done = time.Now()
	t.Logf("%d commits in %s (%.0f/s)", n, h.done.Sub(start).Round(time.Millisecond), float64(n)/h.done.Sub(start).Seconds())
	return h
}

// last is the newest TXID the history rebuilds.
func (h *levelHistory) last() uint64 {
	plan, err := sqlfsrestore.Plan(context.Background(), h.replica, "app.db", 0)
	if err != nil || len(plan) == 0 {
		return 0
	}
	return uint64(plan[len(plan)-1].MaxTXID)
}

// rows is the row count at txid.
func (h *levelHistory) rows(txid uint64) int {
	if txid <= h.base {
		return 0
	}
	return int(txid - h.base)
}

var nearestRE = regexp.MustCompile(`restorable here: txid ([0-9a-f]{16})(?: or ([0-9a-f]{16}))?`)

// restoreAt restores txid (0: latest) with the CLI and returns the TXID
// restored and its row count, or the CLI's error text.
func (h *levelHistory) restoreAt(txid uint64) (uint64, int, string) {
	t := h.t
	t.Helper()
	out := filepath.Join(t.TempDir(), "app.db")
	args := []string{"restore", "-o", out}
	if txid != 0 {
		args = append(args, "-txid", fmt.Sprintf("%x", txid))
	}
	if h.url != "" {
		args = append(args, h.url)
	} else {
		args = append(args, "-data", h.data, "-db", "app.db")
	}
	began := time.Now()
	res := runSqlfs(t, args...)
	t.Logf("restore %x: exit %d in %s", txid, res.code, time.Since(began).Round(time.Millisecond))
	if res.code != 0 {
		if _, err := os.Stat(out); err == nil {
			t.Fatalf("failed restore left %s behind", out)
		}
		return 0, 0, res.stderr
	}
	m := regexp.MustCompile(`at txid ([0-9a-f]{16})`).FindStringSubmatch(res.stdout + res.stderr)
	if m == nil {
		t.Fatalf("restore said %q", res.stdout+res.stderr)
	}
	got, _ := strconv.ParseUint(m[1], 16, 64)
	integrityCheck(t, out)
	db := openDB(t, out, "mode=ro")
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatalf("restored txid %x: %v", got, err)
	}
	return got, n, ""
}

// checkExact restores txid and wants exactly its state.
func (h *levelHistory) checkExact(txid uint64, what string) {
	h.t.Helper()
	got, n, errText := h.restoreAt(txid)
	if errText != "" {
		h.t.Fatalf("%s: restore of txid %x: %s", what, txid, errText)
	}
	if txid != 0 && got != txid {
		h.t.Fatalf("%s: restored txid %x, asked for %x", what, got, txid)
	}
	if n != h.rows(got) {
		h.t.Fatalf("%s: txid %x has %d rows, want %d", what, got, n, h.rows(got))
	}
}

// histAt mounts txid read-only and returns its row count as the sqlite3
// CLI reads it through the mount, after an integrity_check there; or
// sqlfs's error text when it does not mount.
func (h *levelHistory) histAt(txid uint64) (int, string) {
	t := h.t
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "hist")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	data, flags := h.data, []string{"-at-txid", fmt.Sprintf("%x", txid), "-db", "app.db"}
	if h.url != "" {
		data, flags = "", append(flags, "-replica", h.url)
	}
	began := time.Now()
	hm, err := tryStartMount(t, data, mnt, flags...)
	if err != nil {
		return 0, err.Error()
	}
	defer hm.Stop()
	t.Logf("historical mount of %x up in %s", txid, time.Since(began).Round(time.Millisecond))
	integrityCheck(t, hm.Path("app.db"))
	n, err := strconv.Atoi(strings.TrimSpace(sqlite3Cmd(t, hm.Path("app.db"), "SELECT count(*) FROM t")))
	if err != nil {
		t.Fatalf("historical mount of %x: %v", txid, err)
	}
	return n, ""
}

// checkHist mounts txid read-only and wants exactly its state there.
func (h *levelHistory) checkHist(txid uint64, what string) {
	h.t.Helper()
	n, errText := h.histAt(txid)
	if errText != "" {
		h.t.Fatalf("%s: historical mount of txid %x: %s", what, txid, errText)
	}
	if n != h.rows(txid) {
		h.t.Fatalf("%s: historical mount of txid %x has %d rows, want %d", what, txid, n, h.rows(txid))
	}
}

// checkOldestHist mounts the oldest state history can rebuild, as
// checkOldest restores it.
func (h *levelHistory) checkOldestHist() {
	h.t.Helper()
	for try := 0; ; try++ {
		old := h.oldest()
		n, errText := h.histAt(old)
		if errText != "" && try < 3 && h.oldest() != old {
			continue // retention moved on meanwhile
		}
		if errText != "" || n != h.rows(old) {
			h.t.Fatalf("oldest retained: historical mount of txid %x: %d rows, want %d %s", old, n, h.rows(old), errText)
		}
		return
	}
}

// checkOldest restores the oldest state history can rebuild. A retention
// pass may cut history between finding that state and restoring it; then
// the new oldest state is tried (a few times).
func (h *levelHistory) checkOldest() {
	h.t.Helper()
	for try := 0; ; try++ {
		old := h.oldest()
		got, n, errText := h.restoreAt(old)
		if errText != "" && try < 3 && h.oldest() != old {
			continue // retention moved on meanwhile
		}
		if errText != "" {
			h.t.Fatalf("oldest retained: restore of txid %x: %s", old, errText)
		}
		if got != old || n != h.rows(got) {
			h.t.Fatalf("oldest retained: restored %x with %d rows, want %x with %d", got, n, old, h.rows(old))
		}
		return
	}
}

// checkOld restores an old txid: either exactly, or the CLI refuses it and
// names the nearest restorable TXIDs, which restore exactly.
func (h *levelHistory) checkOld(txid uint64) {
	h.t.Helper()
	got, n, errText := h.restoreAt(txid)
	if errText == "" {
		if got != txid || n != h.rows(got) {
			h.t.Fatalf("old txid %x: restored %x with %d rows, want %d", txid, got, n, h.rows(txid))
		}
		return
	}
	m := nearestRE.FindStringSubmatch(errText)
	if m == nil || !strings.Contains(errText, "not found") {
		h.t.Fatalf("old txid %x: %s", txid, errText)
	}
	for _, s := range m[1:] {
		if s == "" {
			continue
		}
		near, _ := strconv.ParseUint(s, 16, 64)
		if near < txid && near < h.oldest() {
			continue // cut by retention since the message
		}
		h.checkExact(near, fmt.Sprintf("nearest restorable txid to %x", txid))
	}
}

// oldest is the oldest TXID the history still rebuilds.
func (h *levelHistory) oldest() uint64 {
	var all []*ltx.FileInfo
	for level := 0; level <= ship.SnapshotLevel; level++ {
		files, err := h.files.LTXFiles(context.Background(), "app.db", level)
		if err != nil {
			h.t.Fatal(err)
		}
		all = append(all, files...)
	}
	reach := ship.ReachFrom0(all)
	if len(reach) == 0 {
		h.t.Fatal("history rebuilds no state")
	}
	return uint64(reach[0])
}

// passes counts the retention passes the mount logged so far.
func (h *levelHistory) passes() int { return strings.Count(h.m.log.String(), "retention pass") }

// planSize is how many files a restore of txid reads.
func (h *levelHistory) planSize(txid uint64) int {
	plan, err := sqlfsrestore.Plan(context.Background(), h.replica, "app.db", ltx.TXID(txid))
	if err != nil {
		h.t.Fatalf("plan %x: %v", txid, err)
	}
	return len(plan)
}

// waitSlow is waitFor for conditions that read a whole history: it polls
// every 300 ms so as not to starve the mount it waits for.
func waitSlow(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(300 * time.Millisecond)
	}
	return true
}

// checkLevels runs the checks every levels test shares: exact restores in
// the level-0 window, old TXIDs at level boundaries, and the latest and
// oldest states across several retention passes, each reading few files.
func (h *levelHistory) checkLevels() {
	t := h.t
	end := h.base + uint64(h.n)
	if !waitSlow(60*time.Second, func() bool { return h.last() == end }) {
		t.Fatalf("history ends at %x, want %x", h.last(), end)
	}
	t.Logf("history complete %s after the last commit", time.Since(h.done).Round(time.Millisecond))
	// Commits of the last two seconds are inside the 8 s window.
	var recent []uint64
	for i := h.n; i >= 1 && h.done.Sub(h.at[i]) < 2*time.Second; i-- {
		recent = append(recent, h.base+uint64(i))
	}
	for k := 0; k < 2 && len(recent) > 0; k++ {
		h.checkExact(recent[rand.IntN(len(recent))], "in the level-0 window")
	}
	if h.url == "" && len(recent) > 0 { // a replica's 4 s window is too short for a mount more
		h.checkHist(recent[rand.IntN(len(recent))], "in the level-0 window")
	}
	// Wait until retention cut the oldest history, then restore an old TXID.
	if !waitSlow(60*time.Second, func() bool { return h.oldest() > h.base+uint64(h.n/10) }) {
		t.Fatalf("retention kept history from txid %x on", h.oldest())
	}
	t.Logf("retention cut history to %x at %s", h.oldest(), time.Since(h.done).Round(time.Millisecond))
	h.checkOld(h.base + 1 + uint64(rand.IntN(h.n/2)))
	t.Logf("old txids checked at %s", time.Since(h.done).Round(time.Millisecond))
	// Across retention passes, the latest and the oldest state restore,
	// from few files.
	for pass := 0; pass < 2; pass++ {
		latest := h.planSize(0)
		h.checkExact(0, "latest")
		old := h.oldest()
		if pass == 0 { // each restore from the data dir reads its capture log
			h.checkOldest()
			h.checkOldestHist()
		}
		t.Logf("pass %d: latest state from %d files, oldest retained %x", pass, latest, old)
		if latest > 50 {
			t.Fatalf("restoring the latest state reads %d files", latest)
		}
		// A new commit gives retention something to cut (counted from
		// before it: the pass may run before sqlite3 has exited).
		passes := h.passes()
		sqlite3Cmd(t, h.m.Path("app.db"), "INSERT INTO t(v) VALUES (0)")
		if !waitSlow(30*time.Second, func() bool { return h.passes() > passes }) {
			t.Fatal("no retention pass ran")
		}
	}
}

func TestLevelsLocal(t *testing.T) {
	needE2E(t)
	data, mnt := newDirs(t)
	m := startMount(t, data, mnt, levelFlags...)
	h := writeLevelHistory(t, m, 100_000)
	h.checkLevels()
	m.Stop()
}
