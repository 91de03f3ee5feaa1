package test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/superfly/ltx"
	"golang.org/x/sys/unix"
)

// histRecord is what SQLite saw when history stood at txid.
type histRecord struct {
	step  string
	txid  uint64
	state string    // dbState
	query string    // the sqlite3 CLI's answer to histQuery ("" before t exists)
	at    time.Time // just after the commit returned
}

const histQuery = "SELECT count(*), max(id), sum(length(v)) FROM t;"

// histWorkload grows, updates, checkpoints (in WAL mode), shrinks with
// DELETE and VACUUM, and grows again.
func histWorkload(mode string) []step {
	series := func(n int) string {
		return fmt.Sprintf(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<%d)`, n)
	}
	s := []step{
		{"mode", "PRAGMA journal_mode=" + mode + ";", 0},
		{"create", `CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v BLOB); CREATE INDEX t_k ON t(k);`, 0},
		{"grow", `INSERT INTO t(k, v) ` + series(2000) + ` SELECT 'row-' || x, randomblob(300) FROM c;`, 0},
		{"update", `UPDATE t SET v = randomblob(310) WHERE id % 7 = 0;`, 0},
	}
	if mode == "WAL" {
		s = append(s, step{"checkpoint-truncate", `PRAGMA wal_checkpoint(TRUNCATE); INSERT INTO t(k, v) VALUES ('after-truncate', randomblob(50));`, 0})
	}
	s = append(s,
		step{"delete", `DELETE FROM t WHERE id % 4 <> 0;`, 0},
		step{"vacuum", `VACUUM;`, 0},
		step{"grow-again", `INSERT INTO t(k, v) ` + series(300) + ` SELECT 'again-' || x, randomblob(500) FROM c;`, 0},
	)
	if mode == "WAL" {
		s = append(s, step{"checkpoint-passive", `PRAGMA wal_checkpoint(PASSIVE); UPDATE t SET k = k || '!' WHERE id % 3 = 0;`, 0})
	}
	return s
}

// runHistWorkload runs the workload through the live mount with the sqlite3
// CLI and records, after every step that committed, the TXID history ends
// at and what SQLite sees. Steps are at least a few milliseconds apart, so
// every recorded time falls between two commit timestamps.
func runHistWorkload(t *testing.T, m *Mount, name, mode string) []histRecord {
	t.Helper()
	path := m.Path(name)
	cli := startCLI(t, path)
	var recs []histRecord
	var last uint64
	for _, s := range histWorkload(mode) {
		cli.exec(t, s.sql)
		txid := lastTXID(t, m.Data, name)
		if txid == last {
			continue
		}
		last = txid
		r := histRecord{step: s.name, txid: txid, state: dbState(t, path), at: time.Now()}
		if s.name != "mode" {
			r.query = cli.exec(t, histQuery)
		}
		recs = append(recs, r)
		waitFor(time.Second, func() bool { return time.Since(r.at) > 3*time.Millisecond })
	}
	cli.close(t)
	return recs
}

// checkHistMount compares a historical mount of name at r with what SQLite
// saw then: the CLI's answer, the whole state, and a copy out against
// `sqlfs restore` of the same TXID, which must differ at most in header
// bytes 18 and 19 (WAL presented as rollback mode), and pass integrity_check.
func checkHistMount(t *testing.T, hm *Mount, name string, r histRecord, restoreArgs ...string) {
	t.Helper()
	path := hm.Path(name)
	if r.query != "" {
		if got := sqlite3Cmd(t, path, histQuery); got != r.query {
			t.Errorf("%s at txid %d (%s): sqlite3 answers %q, SQLite saw %q", name, r.txid, r.step, got, r.query)
		}
	}
	if got := dbState(t, path); got != r.state {
		t.Errorf("%s at txid %d (%s): state through the historical mount differs from what SQLite saw", name, r.txid, r.step)
	}
	dir := t.TempDir()
	copied, restored := filepath.Join(dir, "copy.db"), filepath.Join(dir, "restored.db")
	if out, err := exec.Command("cp", path, copied).CombinedOutput(); err != nil {
		t.Fatalf("cp %s: %v: %s", path, err, out)
	}
	args := append([]string{"restore", "-o", restored, "-txid", fmt.Sprintf("%x", r.txid), "-db", name}, restoreArgs...)
	if res := runSqlfs(t, args...); res.code != 0 {
		t.Fatalf("sqlfs %s: exit %d: %s", strings.Join(args, " "), res.code, res.stderr)
	}
	a, _ := os.ReadFile(copied)
	b, _ := os.ReadFile(restored)
	if len(a) != len(b) {
		t.Fatalf("txid %d: copy out has %d bytes, restore %d", r.txid, len(a), len(b))
	}
	if len(b) >= 20 && b[18] == 2 && b[19] == 2 {
		if a[18] != 1 || a[19] != 1 {
			t.Errorf("txid %d: WAL database presented with header bytes 18-19 = %d %d, want 1 1", r.txid, a[18], a[19])
		}
		a[18], a[19] = 2, 2
	}
	if !bytes.Equal(a, b) {
		t.Errorf("txid %d: copy out differs from sqlfs restore beyond header bytes 18-19", r.txid)
	}
	integrityCheck(t, copied)
}

// TestHist: historical mounts of every recorded TXID of a workload, all
// mounted side by side and next to the live mount of the same data dir,
// show what SQLite saw; a copy out equals sqlfs restore; writes fail with
// EROFS; concurrent readers agree; a copy goes back into the live mount.
func TestHist(t *testing.T) {
	needE2E(t)
	for _, mode := range []string{"WAL", "DELETE"} {
		t.Run(mode, func(t *testing.T) {
			data, mnt := newDirs(t)
			live := startMount(t, data, mnt)
			recs := runHistWorkload(t, live, "app.db", mode)
			if len(recs) < 6 {
				t.Fatalf("workload made %d commits: %+v", len(recs), recs)
			}
			mounts := make([]*Mount, len(recs))
			for i, r := range recs {
				hmnt := filepath.Join(t.TempDir(), "hist")
				os.Mkdir(hmnt, 0o755)
				mounts[i] = startMount(t, data, hmnt, "-at-txid", fmt.Sprintf("%x", r.txid), "-db", "app.db")
			}
			for i, r := range recs {
				checkHistMount(t, mounts[i], "app.db", r, "-data", data)
			}
			last := mounts[len(mounts)-1]
			if mode == "WAL" {
				checkReadOnly(t, last.Path("app.db"))
				checkConcurrentReaders(t, last.Path("app.db"))
			}
			// Restore = copy out, here into the live mount.
			mid := recs[len(recs)/2]
			if out, err := exec.Command("cp", mounts[len(recs)/2].Path("app.db"), live.Path("restored.db")).CombinedOutput(); err != nil {
				t.Fatalf("cp into the live mount: %v: %s", err, out)
			}
			if got := dbState(t, live.Path("restored.db")); got != mid.state {
				t.Errorf("copied into the live mount: state differs from txid %d", mid.txid)
			}
			if lastTXID(t, data, "restored.db") == 0 {
				t.Errorf("the copy into the live mount has no history")
			}
			for _, m := range mounts {
				m.Stop()
			}
			live.Stop()
		})
	}
}

// checkReadOnly tries every writing operation on a historical database and
// its directory: each must fail with EROFS, and the file must not change.
func checkReadOnly(t *testing.T, path string) {
	t.Helper()
	dir := filepath.Dir(path)
	before, _ := os.ReadFile(path)
	openErr := func(p string, flags int) error {
		fd, err := unix.Open(p, flags|unix.O_CLOEXEC, 0o644)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	for _, op := range []struct {
		name string
		do   func() error
	}{
		{"open O_RDWR", func() error { return openErr(path, unix.O_RDWR) }},
		{"open O_WRONLY|O_TRUNC", func() error { return openErr(path, unix.O_WRONLY|unix.O_TRUNC) }},
		{"open O_APPEND", func() error { return openErr(path, unix.O_WRONLY|unix.O_APPEND) }},
		{"create", func() error { return openErr(filepath.Join(dir, "new.db"), unix.O_WRONLY|unix.O_CREAT) }},
		{"create -journal", func() error { return openErr(path+"-journal", unix.O_RDWR|unix.O_CREAT) }},
		{"truncate", func() error { return unix.Truncate(path, 0) }},
		{"chmod", func() error { return unix.Chmod(path, 0o600) }},
		{"utimes", func() error { return unix.UtimesNano(path, []unix.Timespec{{Sec: 1}, {Sec: 1}}) }},
		{"unlink", func() error { return unix.Unlink(path) }},
		{"rename", func() error { return unix.Rename(path, filepath.Join(dir, "moved.db")) }},
		{"mkdir", func() error { return unix.Mkdir(filepath.Join(dir, "d"), 0o755) }},
		{"mknod", func() error { return unix.Mknod(filepath.Join(dir, "fifo"), unix.S_IFIFO|0o644, 0) }},
		{"symlink", func() error { return unix.Symlink("app.db", filepath.Join(dir, "sym")) }},
		{"link", func() error { return unix.Link(path, filepath.Join(dir, "hard")) }},
		{"setxattr", func() error { return unix.Setxattr(path, "user.sqlfs", []byte("1"), 0) }},
		{"removexattr", func() error { return unix.Removexattr(path, "user.sqlfs") }},
	} {
		if err := op.do(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on the historical mount: %v, want EROFS", op.name, err)
		}
	}
	cmd := exec.Command("sqlite3", path, "INSERT INTO t(k) VALUES ('no');")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "readonly database") {
		t.Errorf("sqlite3 INSERT through the historical mount: %v: %s", err, out)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Errorf("historical database changed")
	}
}

// checkConcurrentReaders reads one historical database from two processes
// and two goroutines at once: all must agree.
func checkConcurrentReaders(t *testing.T, path string) {
	t.Helper()
	var wg sync.WaitGroup
	answers := make([]string, 4)
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i < 2 {
				out, err := exec.Command("sqlite3", path, "SELECT id, k, hex(v) FROM t ORDER BY k;").CombinedOutput()
				answers[i] = fmt.Sprintf("%x %v", sha256.Sum256(out), err)
				return
			}
			b, err := os.ReadFile(path)
			answers[i] = fmt.Sprintf("%x %v", sha256.Sum256(b), err)
		}()
	}
	wg.Wait()
	if answers[0] != answers[1] || answers[2] != answers[3] || strings.Contains(answers[0], "exit") {
		t.Errorf("concurrent readers disagree: %q", answers)
	}
}

// TestHistS3: historical mounts from an S3 replica, by TXID and by time
// (every database of the replica root as it was then); a replica that
// cannot be read is refused before anything is mounted.
func TestHistS3(t *testing.T) {
	s3 := startS3(t)
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // the page cache of the mounts below
	url := s3.url("prod")
	data, mnt := newDirs(t)
	live := startMount(t, data, mnt, "-replica", url)
	app := runHistWorkload(t, live, "app.db", "WAL")
	other := runHistWorkload(t, live, "other.db", "DELETE")
	waitReplica(t, url, "app.db", app[len(app)-1].txid)
	waitReplica(t, url, "other.db", other[len(other)-1].txid)
	live.Stop() // the replica alone from here on

	hist := func(args ...string) *Mount {
		t.Helper()
		hmnt := filepath.Join(t.TempDir(), "hist")
		os.Mkdir(hmnt, 0o755)
		return startMount(t, "", hmnt, append([]string{"-replica", url}, args...)...)
	}
	for _, r := range []histRecord{app[2], app[len(app)-1]} {
		hm := hist("-at-txid", fmt.Sprintf("%016x", r.txid), "-db", "app.db")
		checkHistMount(t, hm, "app.db", r, url)
		hm.Stop()
	}

	// At the time of app.db's third recorded commit other.db did not exist
	// yet, and is left out; at the end of its workload both are there.
	early := hist("-at-time", app[2].at.UTC().Format(time.RFC3339Nano))
	if names := dirNames(t, early.Dir); strings.Join(names, ",") != "app.db" {
		t.Errorf("-at-time before other.db existed shows %v", names)
	}
	checkHistMount(t, early, "app.db", app[2], url)
	early.Stop()
	mid := other[len(other)/2]
	both := hist("-at-time", mid.at.UTC().Format(time.RFC3339Nano))
	if names := dirNames(t, both.Dir); strings.Join(names, ",") != "app.db,other.db" {
		t.Errorf("-at-time shows %v", names)
	}
	checkHistMount(t, both, "app.db", app[len(app)-1], url)
	checkHistMount(t, both, "other.db", mid, url)
	both.Stop()

	_, hmnt := newDirs(t)
	r := mountMustFail(t, "-at-txid", "3", "-db", "app.db", "-replica", "s3://nope/prod", hmnt)
	wantError(t, r, `bucket "nope" does not exist`)
	if st := fuseState(hmnt); st != fuseNone {
		t.Errorf("a failed historical mount left %s mount", st)
	}
}

// TestHistErrors: bad requests fail before anything is mounted, with one
// line naming what is wrong.
func TestHistErrors(t *testing.T) {
	data, mnt := newDirs(t)
	live := startMount(t, data, mnt)
	sqlite3Cmd(t, live.Path("app.db"), "CREATE TABLE t(x); INSERT INTO t VALUES (1);")
	last := lastTXID(t, data, "app.db")
	live.Stop()

	hmnt := filepath.Join(t.TempDir(), "hist")
	os.Mkdir(hmnt, 0o755)
	for _, tt := range []struct {
		name    string
		args    []string
		code    int
		mention []string
	}{
		{"txid past the end", []string{"-at-txid", "99", "-data", data, "-db", "app.db", hmnt}, 1,
			[]string{"txid 0000000000000099 not found", fmt.Sprintf("ends at %016x", last)}},
		{"time before the first commit", []string{"-at-time", "2001-02-03T04:05:06Z", "-data", data, "-db", "app.db", hmnt}, 1,
			[]string{"no commit of app.db at or before 2001-02-03T04:05:06", "history starts at"}},
		{"time before any database", []string{"-at-time", "2001-02-03T04:05:06Z", "-data", data, hmnt}, 1,
			[]string{"at or before 2001-02-03T04:05:06"}},
		{"unknown database", []string{"-at-txid", "1", "-data", data, "-db", "nope.db", hmnt}, 1,
			[]string{"no history for database nope.db", "app.db"}},
		{"empty data dir", []string{"-at-txid", "1", "-data", t.TempDir(), hmnt}, 1, []string{"holds no history"}},
		{"bad replica URL", []string{"-at-txid", "1", "-replica", "ftp://host/x", hmnt}, 2, []string{"ftp"}},
		{"both txid and time", []string{"-at-txid", "1", "-at-time", "2024-01-15T09:00:00Z", "-data", data, hmnt}, 2,
			[]string{"-at-txid or -at-time, not both"}},
		{"data and replica", []string{"-at-txid", "1", "-data", data, "-replica", "file:///x", hmnt}, 2, []string{"not both"}},
		{"bad txid", []string{"-at-txid", "xyz", "-data", data, hmnt}, 2, []string{"-at-txid xyz"}},
		{"bad time", []string{"-at-time", "yesterday", "-data", data, hmnt}, 2, []string{"-at-time yesterday", "RFC 3339"}},
		{"missing mount point", []string{"-at-txid", "1", "-data", data, "-db", "app.db", hmnt + "-nope"}, 1,
			[]string{"mount point " + hmnt + "-nope does not exist"}},
		{"no mount point", []string{"-at-txid", "1", "-data", data, "-db", "app.db"}, 2, []string{"mount point"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := mountMustFail(t, tt.args...)
			wantError(t, r, tt.mention...)
			if r.code != tt.code {
				t.Errorf("exit code %d, want %d", r.code, tt.code)
			}
			if st := fuseState(hmnt); st != fuseNone {
				t.Fatalf("a failed historical mount left %s mount", st)
			}
		})
	}
}

// TestHistCorruptSnapshot: one changed byte inside a page frame of a
// snapshot (level 9) in a replica, served from S3 and as a file:// replica.
// A point query that reads only intact pages still answers; cp of the whole
// database fails with an I/O error, and the mount logs an ERROR naming the
// snapshot. Before the damage the same cp succeeds.
func TestHistCorruptSnapshot(t *testing.T) {
	s3 := startS3(t)
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	url := s3.url("prod")
	data, mnt := newDirs(t)
	live := startMount(t, data, mnt, "-replica", url, "-levels", "1s,3s", "-snapshot-interval", "4s")
	// About 2 MB of random rows: the snapshot is far larger than what a
	// mount reads whole (and verifies) at open, and LZ4 keeps the rows as
	// literals, so a changed byte decodes to a changed page.
	sqlite3Cmd(t, live.Path("app.db"), `CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
		WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 2000)
		INSERT INTO t(v) SELECT randomblob(1000) FROM c;`)
	// One more commit past the next level-2 boundary: then no level-1 or
	// level-2 file covers all of history, and a snapshot of the last TXID,
	// one file, is the whole plan of a mount of it.
	time.Sleep(3500 * time.Millisecond)
	sqlite3Cmd(t, live.Path("app.db"), "UPDATE t SET v = randomblob(1000) WHERE id = 1;")
	last := lastTXID(t, data, "app.db")
	waitReplica(t, url, "app.db", last)
	var snap string
	if !waitFor(30*time.Second, func() bool {
		m, _ := filepath.Glob(filepath.Join(s3.dir, s3Bucket, "prod", "app.db", "0009", fmt.Sprintf("*-%016x.ltx", last)))
		if len(m) == 1 {
			snap = m[0]
		}
		return snap != ""
	}) {
		t.Fatalf("no snapshot of txid %d in the replica after 30 s\n%s", last, live.log)
	}
	live.Stop()
	snapName := strings.TrimPrefix(snap, filepath.Join(s3.dir, s3Bucket, "prod")+"/")
	fileURL := "file://" + filepath.Join(s3.dir, s3Bucket, "prod") // versitygw keeps each object as a plain file

	hist := func(source string) *Mount {
		t.Helper()
		hmnt := filepath.Join(t.TempDir(), "hist")
		os.Mkdir(hmnt, 0o755)
		return startMount(t, "", hmnt, "-replica", source, "-at-txid", fmt.Sprintf("%x", last), "-db", "app.db")
	}
	cp := func(hm *Mount) (string, error) {
		out, err := exec.Command("cp", hm.Path("app.db"), filepath.Join(t.TempDir(), "copy.db")).CombinedOutput()
		return string(out), err
	}
	hm := hist(url)
	if out, err := cp(hm); err != nil {
		t.Fatalf("cp out of an intact snapshot: %v: %s", err, out)
	}
	hm.Stop()

	// Damage the last page's frame, in the middle of its compressed bytes.
	raw, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	dec := ltx.NewDecoder(bytes.NewReader(raw))
	if err := dec.Verify(); err != nil {
		t.Fatalf("snapshot %s before the damage: %v", snapName, err)
	}
	elem := dec.PageIndex()[dec.Header().Commit]
	raw[elem.Offset+elem.Size/2] ^= 0x01
	if err := os.WriteFile(snap, raw, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, source := range []string{url, fileURL} {
		t.Run(strings.SplitN(source, ":", 2)[0], func(t *testing.T) {
			t.Setenv("XDG_CACHE_HOME", t.TempDir()) // nothing cached from before the damage
			hm := hist(source)
			if got := sqlite3Cmd(t, hm.Path("app.db"), "SELECT length(v) FROM t WHERE id = 3;"); strings.TrimSpace(got) != "1000" {
				t.Errorf("point query on intact pages: %q, want 1000", got)
			}
			cpOut, err := cp(hm)
			if err == nil || !strings.Contains(cpOut, "Input/output error") {
				t.Errorf("cp out of a corrupt snapshot: %v: %q, want an I/O error", err, cpOut)
			}
			if log := hm.log.String(); !strings.Contains(log, "level=ERROR") || !strings.Contains(log, snapName) {
				t.Errorf("no ERROR naming %s in the mount's log:\n%s", snapName, log)
			}
			// From then on every read of the snapshot fails, the pages the
			// kernel had cached for the first query included (they are
			// dropped right after the failure, not within it).
			var out []byte
			if !waitFor(5*time.Second, func() bool {
				out, err = exec.Command("sqlite3", hm.Path("app.db"), "SELECT length(v) FROM t WHERE id = 3;").CombinedOutput()
				return err != nil && strings.Contains(string(out), "disk I/O error")
			}) {
				t.Errorf("point query after the failure: %v: %q, want a disk I/O error", err, out)
			}
			hm.Stop()
		})
	}
}
