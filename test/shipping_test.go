package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newS3Replica starts an S3 server and returns the URL of a prefix in it,
// with a fresh data dir and mount point to replicate from.
func newS3Replica(t *testing.T, prefix string) (s3 *s3Server, url, data, mnt string) {
	t.Helper()
	s3 = startS3(t)
	data, mnt = newDirs(t)
	return s3, s3.url(prefix), data, mnt
}

// reach is how far a chain of files from TXID 1 gets, as restore plans it.
func reach(files []txRange) uint64 {
	far := map[uint64]uint64{}
	for _, f := range files {
		far[f.Min] = max(far[f.Min], f.Max)
	}
	var pos uint64
	for far[pos+1] > pos {
		pos = far[pos+1]
	}
	return pos
}

// waitReplicaReach waits until the replica's files of db chain from 1 to
// want (merged files allowed) and returns them.
func waitReplicaReach(t *testing.T, url, db string, want uint64, timeout time.Duration) []txRange {
	t.Helper()
	var files []txRange
	if !waitFor(timeout, func() bool {
		files = replicaRanges(t, url, db)
		return reach(files) >= want
	}) {
		t.Fatalf("replica %s reaches txid %d of %s after %v, want %d", url, reach(files), db, timeout, want)
	}
	return files
}

// writer commits one row at a time to a database through the mount, at
// most rate commits a second (0: as fast as it can), until stopped.
type writer struct {
	n      atomic.Int64
	stop   chan struct{}
	done   chan error
	stopFn func() error
}

func startWriter(t *testing.T, path string, rate int) *writer {
	t.Helper()
	db := openDB(t, path, "_journal_mode=WAL")
	if _, err := db.Exec("CREATE TABLE IF NOT EXISTS w(id INTEGER PRIMARY KEY, v TEXT)"); err != nil {
		t.Fatal(err)
	}
	w := &writer{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		defer db.Close()
		var tick <-chan time.Time
		if rate > 0 {
			tk := time.NewTicker(time.Second / time.Duration(rate))
			defer tk.Stop()
			tick = tk.C
		}
		for {
			select {
			case <-w.stop:
				w.done <- nil
				return
			default:
			}
			if tick != nil {
				select {
				case <-tick:
				case <-w.stop:
					w.done <- nil
					return
				}
			}
			if _, err := db.Exec("INSERT INTO w(v) VALUES(?)", fmt.Sprint("row ", w.n.Load())); err != nil {
				w.done <- err
				return
			}
			w.n.Add(1)
		}
	}()
	var once sync.Once
	w.stopFn = func() error {
		var err error
		once.Do(func() { close(w.stop); err = <-w.done })
		return err
	}
	t.Cleanup(func() { w.stopFn() })
	return w
}

// finish stops the writer and fails the test if a commit failed.
func (w *writer) finish(t *testing.T) int64 {
	t.Helper()
	if err := w.stopFn(); err != nil {
		t.Fatalf("writer: %v", err)
	}
	return w.n.Load()
}

// restoreAt restores db at txid from a history source (a replica URL, or
// "-data DIR") and returns the state hash.
func restoreAt(t *testing.T, txid uint64, src ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "app.db")
	args := append([]string{"restore", "-o", out, "-txid", fmt.Sprintf("%x", txid)}, src...)
	if res := runSqlfs(t, args...); res.code != 0 {
		t.Fatalf("sqlfs %s: exit %d: %s", strings.Join(args, " "), res.code, res.stderr)
	}
	integrityCheck(t, out)
	return dbState(t, out)
}

// TestReplicaS3Outage30s: the S3 server is down for 30 s while the
// application keeps committing; nothing is lost, the backlog drains once the
// server is back, and the replica restores the same states as local history.
// A clean stop with the server down gives up after -shutdown-timeout and
// says what is pending; the next mount ships it.
func TestReplicaS3Outage30s(t *testing.T) {
	s3, url, data, mnt := newS3Replica(t, "outage")
	flags := []string{"-replica", url, "-shutdown-timeout", "2s"}
	m := startMount(t, data, mnt, flags...)
	w := startWriter(t, m.Path("app.db"), 20)
	if !waitFor(10*time.Second, func() bool { return w.n.Load() >= 20 }) {
		t.Fatal("writer made no progress")
	}
	s3.stop()
	down := time.Now()
	if !waitFor(20*time.Second, func() bool { return strings.Contains(m.log.String(), "upload failed") }) {
		t.Fatalf("no failed upload logged while the server was down:\n%s", m.log)
	}
	atDown := w.n.Load()
	waitFor(35*time.Second, func() bool { return time.Since(down) >= 30*time.Second })
	if w.n.Load()-atDown < 300 {
		t.Fatalf("only %d commits during the outage", w.n.Load()-atDown)
	}
	s3.start()
	back, atBack := time.Now(), w.n.Load()
	if !waitFor(10*time.Second, func() bool { return w.n.Load() >= atBack+20 }) {
		t.Fatal("writer stalled after the outage")
	}
	n := w.finish(t)
	want := lastTXID(t, data, "app.db")
	files := waitReplicaReach(t, url, "app.db", want, 60*time.Second)
	t.Logf("%d commits, %d in the outage; replica caught up %v after the server came back, %d files",
		n, n-atDown, time.Since(back).Round(time.Millisecond), len(files))
	checkReplicaRestore(t, url, dbState(t, m.Path("app.db")), "after a 30 s outage")
	// Sampled states: before, in and after the outage, each restored from
	// the replica and from local history.
	for _, i := range []int{len(files) / 5, len(files) / 2, 4 * len(files) / 5} {
		txid := files[i].Max
		if a, b := restoreAt(t, txid, url), restoreAt(t, txid, "-data", data, "-db", "app.db"); a != b {
			t.Fatalf("txid %d: the replica restores another state than local history", txid)
		}
	}

	// A clean stop that cannot ship: bounded, and it says what is pending.
	s3.stop()
	sqlite3Cmd(t, m.Path("app.db"), "INSERT INTO w(v) VALUES('at unmount')")
	start := time.Now()
	m.Stop()
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("unmount took %v with -shutdown-timeout 2s", d)
	}
	if !strings.Contains(m.log.String(), "replica not up to date at unmount") || !strings.Contains(m.log.String(), "pending=1") {
		t.Fatalf("unmount did not say what is pending:\n%s", tail(m.log.String(), 10))
	}
	s3.start()
	m = startMount(t, data, mnt, flags...)
	waitReplicaReach(t, url, "app.db", lastTXID(t, data, "app.db"), 30*time.Second)
	checkReplicaRestore(t, url, dbState(t, m.Path("app.db")), "after the remount")
	m.Stop()
}

// TestReplicaMergeBacklog: with -max-backlog 5 and the server down, the
// backlog goes up as one merged file once the server is back; `sqlfs ltx`
// shows its range, the latest state restores, and a TXID inside it is
// refused with a message that says why.
func TestReplicaMergeBacklog(t *testing.T) {
	s3, url, data, mnt := newS3Replica(t, "merge")
	m := startMount(t, data, mnt, "-replica", url, "-max-backlog", "5")
	cli := startWALTable(t, m)
	for i := range 5 {
		cli.exec(t, fmt.Sprintf("INSERT INTO t(v) VALUES('before %d');", i))
	}
	settle(t, cli)
	before := lastTXID(t, data, "app.db")
	// The setup's burst may itself go up merged: -max-backlog is 5.
	waitReplicaReach(t, url, "app.db", before, 30*time.Second)
	s3.stop()
	for i := range 40 {
		cli.exec(t, fmt.Sprintf("INSERT INTO t(v) VALUES('outage %d');", i))
	}
	s3.start()
	settle(t, cli)
	want := lastTXID(t, data, "app.db")
	files := waitReplicaReach(t, url, "app.db", want, 60*time.Second)
	// The catch-up may go up in more than one merged file (the uploader
	// keeps merging what arrives while it uploads): take the widest.
	var merged *txRange
	for i, f := range files {
		if f.Max > f.Min && f.Max > before && (merged == nil || f.Max-f.Min > merged.Max-merged.Min) {
			merged = &files[i]
		}
	}
	if merged == nil || merged.Max-merged.Min < 5 {
		t.Fatalf("no merged range of the backlog in the replica: %v", files)
	}
	checkReplicaRestore(t, url, dbState(t, m.Path("app.db")), "after a merged catch-up")
	if got := restoreAt(t, merged.Max, url); got != restoreAt(t, merged.Max, "-data", data, "-db", "app.db") {
		t.Fatalf("txid %d: the merged file restores another state than local history", merged.Max)
	}
	inside := merged.Min + 1
	res := runSqlfs(t, "restore", "-o", filepath.Join(t.TempDir(), "app.db"), "-txid", fmt.Sprintf("%x", inside), url)
	wantMsg := fmt.Sprintf("merges txids %016x through %016x into one state (restorable here: txid %016x or %016x)",
		merged.Min, merged.Max, merged.Min-1, merged.Max)
	if res.code != 1 || !strings.Contains(res.stderr, wantMsg) {
		t.Fatalf("restore of txid %d inside merged %v: exit %d: %s", inside, *merged, res.code, res.stderr)
	}
	// Local history still has every commit.
	checkHistory(t, data, "app.db", want)
	cli.close(t)
	m.Stop()

	// A remount resumes after the merged file.
	m = startMount(t, data, mnt, "-replica", url, "-max-backlog", "5")
	sqlite3Cmd(t, m.Path("app.db"), "INSERT INTO t(v) VALUES('after remount')")
	waitReplicaReach(t, url, "app.db", lastTXID(t, data, "app.db"), 30*time.Second)
	checkReplicaRestore(t, url, dbState(t, m.Path("app.db")), "after a remount past a merged file")
	if strings.Contains(m.log.String(), "differs") {
		t.Fatalf("the remount took its own merged file for another history:\n%s", m.log)
	}
	m.Stop()
}

// TestReplicaPutRate: -max-put-rate 5 holds a stream of commits as fast as
// SQLite makes them to about 5 objects a second, and loses none of them.
func TestReplicaPutRate(t *testing.T) {
	_, url, data, mnt := newS3Replica(t, "rate")
	m := startMount(t, data, mnt, "-replica", url, "-max-put-rate", "5")
	start := time.Now()
	w := startWriter(t, m.Path("app.db"), 0)
	waitFor(5*time.Second, func() bool { return time.Since(start) >= 3*time.Second })
	n := w.finish(t)
	want := lastTXID(t, data, "app.db")
	files := waitReplicaReach(t, url, "app.db", want, 30*time.Second)
	elapsed := time.Since(start)
	if limit := int(5*elapsed.Seconds()) + 2; len(files) > limit {
		t.Fatalf("%d objects for %d commits in %v, want at most %d at 5 PUTs/s", len(files), n, elapsed, limit)
	}
	if n < 50 {
		t.Fatalf("only %d commits", n)
	}
	t.Logf("%d commits, %d objects in %v", n, len(files), elapsed.Round(time.Millisecond))
	checkReplicaRestore(t, url, dbState(t, m.Path("app.db")), "with -max-put-rate")
	m.Stop()
}

// mountRefused runs a mount that must fail and returns its exit code and
// stderr; it fails the test if sqlfs mounts.
func mountRefused(t *testing.T, data, mnt string, flags ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append(append([]string{"mount", "-data", data}, flags...), mnt)
	cmd := exec.CommandContext(ctx, sqlfsBin, args...)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !ee.Exited() {
		forceUnmount(mnt)
		t.Fatalf("sqlfs %s: %v (want a refusal)\n%s", strings.Join(args, " "), err, out.String())
	}
	return ee.ExitCode(), out.String()
}

// forceUnmount detaches a mount a failed refusal test left behind.
func forceUnmount(mnt string) {
	if fuseState(mnt) != fuseNone {
		exec.Command("umount", "-l", mnt).Run()
	}
}

// TestReplicaLease: a second mount pointed at a replica in use is refused
// with a message naming the mount that holds it; the same data dir mounts
// again after kill -9; a clean unmount frees the replica.
func TestReplicaLease(t *testing.T) {
	_, url, data, mnt := newS3Replica(t, "lease")
	m := startMount(t, data, mnt, "-replica", url)
	sqlite3Cmd(t, m.Path("app.db"), "CREATE TABLE t(x); INSERT INTO t VALUES(1);")

	data2, mnt2 := newDirs(t)
	code, out := mountRefused(t, data2, mnt2, "-replica", url)
	host, _ := os.Hostname()
	wantMsg := fmt.Sprintf("replica %s is in use by sqlfs on %s (pid %d, data dir %s) since ", url, host, m.cmd.Process.Pid, data)
	if code != 1 || !strings.Contains(out, wantMsg) {
		t.Fatalf("second mount: exit %d, want 1 and %q in:\n%s", code, wantMsg, out)
	}

	// The lease object does not disturb listing or restoring the root.
	waitReplicaReach(t, url, "app.db", lastTXID(t, data, "app.db"), 30*time.Second)
	checkReplicaRestore(t, url, dbState(t, m.Path("app.db")), "with a lease in the replica root")

	// kill -9 leaves a live-looking lease; the same data dir takes it back.
	m.Kill9()
	m = startMount(t, data, mnt, "-replica", url)
	sqlite3Cmd(t, m.Path("app.db"), "INSERT INTO t VALUES(2);")
	waitReplicaReach(t, url, "app.db", lastTXID(t, data, "app.db"), 30*time.Second)
	if code, out := mountRefused(t, data2, mnt2, "-replica", url); code != 1 || !strings.Contains(out, "is in use by sqlfs") {
		t.Fatalf("second mount after the remount: exit %d:\n%s", code, out)
	}
	m.Stop()

	// After a clean unmount the replica is free.
	m2 := startMount(t, data2, mnt2, "-replica", url)
	m2.Stop()
}
