package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sqlfs/sqlfs/ship"
)

// s3Server is a versitygw process serving a directory over S3 on loopback.
// Tests find the binary in $SQLFS_VERSITYGW, which scripts/test.sh installs
// and exports (it is installed when a test mentions SQLFS_VERSITYGW).
type s3Server struct {
	t        *testing.T
	bin, dir string
	addr     string
	cmd      *exec.Cmd
	done     chan struct{}
	// accessLog is versitygw's access log: one line per request it served,
	// an account of the requests made to it that owes nothing to sqlfs.
	accessLog string
}

const (
	s3Access = "sqlfstest"
	s3Secret = "sqlfstestsecret"
	s3Bucket = "backup"
)

// startS3 starts a versitygw server with an empty bucket, and points the AWS
// SDK of the sqlfs processes this test starts at it through the environment.
func startS3(t *testing.T) *s3Server {
	t.Helper()
	bin := os.Getenv("SQLFS_VERSITYGW")
	if bin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("SQLFS_VERSITYGW is not set: run the tests through scripts/test.sh")
		}
		t.Skip("SQLFS_VERSITYGW not set (scripts/test.sh installs versitygw and sets it)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := &s3Server{t: t, bin: bin, dir: t.TempDir(), addr: addr, accessLog: filepath.Join(t.TempDir(), "access.log")}
	if err := os.Mkdir(filepath.Join(s.dir, s3Bucket), 0o755); err != nil {
		t.Fatal(err)
	}
	s.start()
	t.Cleanup(s.stop)
	t.Setenv("AWS_ACCESS_KEY_ID", s3Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3Secret)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_ENDPOINT_URL_S3", s.endpoint())
	return s
}

func (s *s3Server) endpoint() string { return "http://" + s.addr }

// url is the replica URL of a prefix in the test bucket.
func (s *s3Server) url(prefix string) string { return "s3://" + s3Bucket + "/" + prefix }

func (s *s3Server) start() {
	s.t.Helper()
	s.cmd = exec.Command(s.bin, "--access", s3Access, "--secret", s3Secret, "--port", s.addr, "--access-log", s.accessLog, "--quiet", "posix", s.dir)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out := &syncBuffer{}
	s.cmd.Stdout, s.cmd.Stderr = out, out
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start versitygw: %v", err)
	}
	s.done = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.done) }()
	ok := waitFor(10*time.Second, func() bool {
		resp, err := http.Get(s.endpoint())
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	if !ok {
		s.t.Fatalf("versitygw did not answer on %s:\n%s", s.addr, out)
	}
}

// requests returns versitygw's access log from byte offset from on: the
// request lines served since, and the offset to count from next.
func (s *s3Server) requests(from int) (lines []string, next int) {
	s.t.Helper()
	b, err := os.ReadFile(s.accessLog)
	if err != nil {
		s.t.Fatal(err)
	}
	for _, l := range strings.Split(string(b[from:]), "\n") {
		if strings.Contains(l, " s3_") {
			lines = append(lines, l)
		}
	}
	return lines, len(b)
}

// stop ends the server this test started, by its PID.
func (s *s3Server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// TestReplicaS3: every commit reaches a real S3 server; restore from it
// equals the live database; an outage of the server loses nothing and the
// backlog drains; kill -9 with a backlog ships it at the next mount.
func TestReplicaS3(t *testing.T) {
	s3 := startS3(t)
	url := s3.url("prod")
	m, cli := startReplicatedApp(t, url, 30)
	data, mnt := m.Data, m.Dir
	waitReplica(t, url, "app.db", lastTXID(t, data, "app.db"))

	// The server goes away while the application keeps committing.
	s3.stop()
	for i := range 30 {
		cli.exec(t, fmt.Sprintf("INSERT INTO t(v) VALUES('outage %d');", i))
	}
	if !waitFor(20*time.Second, func() bool { return strings.Contains(m.log.String(), "upload failed") }) {
		t.Fatalf("no failed upload logged while the server was down:\n%s", m.log)
	}
	s3.start()
	settle(t, cli)
	waitReplica(t, url, "app.db", lastTXID(t, data, "app.db"))
	checkReplicaRestore(t, url, dbState(t, m.Path("app.db")), "after an outage")

	// kill -9 with a backlog the server never saw: the next mount ships it.
	s3.stop()
	for i := range 20 {
		cli.exec(t, fmt.Sprintf("INSERT INTO t(v) VALUES('backlog %d');", i))
	}
	cli.close(t)
	m.Kill9()
	s3.start()
	m = startMount(t, data, mnt, "-replica", url)
	waitReplica(t, url, "app.db", lastTXID(t, data, "app.db"))
	checkReplicaRestore(t, url, dbState(t, m.Path("app.db")), "after kill -9 and remount")
	m.Stop()
}

// TestReplicaS3SyncDown: with -sync-replica and the server down, a commit
// fails after -sync-timeout instead of returning as if it were safe.
func TestReplicaS3SyncDown(t *testing.T) {
	s3, url, data, mnt := newS3Replica(t, "sync")
	m := startMount(t, data, mnt, "-replica", url, "-sync-replica", "-sync-timeout", "2s")
	db := openDB(t, m.Path("app.db"), "_journal_mode=WAL&_sync=FULL")
	if _, err := db.Exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO t(v) VALUES('safe')"); err != nil {
		t.Fatal(err)
	}
	if got := replicaTXIDs(t, url, "app.db"); uint64(len(got)) != lastTXID(t, data, "app.db") {
		t.Fatalf("replica has %d TXIDs right after a synchronous commit, want %d", len(got), lastTXID(t, data, "app.db"))
	}
	s3.stop()
	start := time.Now()
	_, err := db.Exec("INSERT INTO t(v) VALUES('not safe')")
	if err == nil {
		t.Fatal("commit returned success with the replica down")
	}
	if d := time.Since(start); d < 2*time.Second || d > 30*time.Second {
		t.Fatalf("failed after %v, want about the 2 s sync timeout", d)
	}
	if !strings.Contains(strings.ToLower(err.Error()), "i/o") {
		t.Logf("commit failed with: %v", err)
	}
	db.Close()
	s3.start()
	m.Stop()
}

// leaseTiming shortens the replica lease for the lease tests: TTL 4s,
// heartbeat 1s, idle after 2s without a write.
const leaseTiming = "4s,1s,2s"

// readLease returns the replica's lease as JSON fields.
func readLease(t *testing.T, url string) (map[string]any, string) {
	t.Helper()
	r, err := ship.OpenReplica(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	data, tag, err := r.ReadLease(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(data, &h); err != nil {
		t.Fatal(err)
	}
	return h, tag
}

// TestReplicaLeaseIdle: a mount whose database does not change makes no
// request at all once its lease is idle and its levels are compacted, as
// versitygw's access log shows; a second mount on the same machine is
// refused while the first writes and while it is idle; a mount on another
// machine takes an idle lease over once it is older than the TTL, and the
// first mount then stops shipping: its next commit stays local, its
// -sync-replica fsync fails with EIO, and the replica keeps the new
// mount's history.
func TestReplicaLeaseIdle(t *testing.T) {
	t.Setenv("SQLFS_LEASE_TIMING", leaseTiming)
	s3, url, data, mnt := newS3Replica(t, "idle")
	m := startMount(t, data, mnt, "-replica", url, "-sync-replica", "-levels", "1s,2s")
	sqlite3Cmd(t, m.Path("app.db"), "CREATE TABLE t(x); INSERT INTO t VALUES(1);")

	data2, mnt2 := newDirs(t)
	if code, out := mountRefused(t, data2, mnt2, "-replica", url); code != 1 || !strings.Contains(out, "is in use by sqlfs") || !strings.Contains(out, "last heartbeat") {
		t.Fatalf("second mount while the first ships: exit %d:\n%s", code, out)
	}

	// Settled: the lease is idle and both levels hold the commits.
	if !waitFor(30*time.Second, func() bool {
		h, _ := readLease(t, url)
		total, levels := replicaLevelFiles(t, url, "app.db")
		return h["state"] == "idle" && levels[2] > 0 && total > 0
	}) {
		h, _ := readLease(t, url)
		t.Fatalf("lease never idle with level 2 written: %v\n%s", h, m.log.String())
	}
	_, from := s3.requests(0)
	const window = 10 * time.Second
	time.Sleep(window) // the measured window: nothing to wait for, by design
	if reqs, _ := s3.requests(from); len(reqs) != 0 {
		t.Fatalf("an idle mount made %d requests in %s:\n%s", len(reqs), window, strings.Join(reqs, "\n"))
	}

	// Idle, but running here: still refused, and the refusal makes no
	// write.
	code, out := mountRefused(t, data2, mnt2, "-replica", url)
	if code != 1 || !strings.Contains(out, "still runs on this machine") {
		t.Fatalf("second mount while the first is idle: exit %d:\n%s", code, out)
	}
	if h, _ := readLease(t, url); h["state"] != "idle" || int(h["pid"].(float64)) != m.cmd.Process.Pid {
		t.Fatalf("lease after the refusal: %v", h)
	}

	// The same lease as a mount on another machine would leave it (a
	// machine this test cannot run): its boot ID is not ours.
	h, tag := readLease(t, url)
	h["boot_id"] = "another-machine"
	b, _ := json.Marshal(h)
	r, err := ship.OpenReplica(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.WriteLease(context.Background(), b, tag); err != nil {
		t.Fatal(err)
	}
	// It went idle more than the TTL ago: taken over at once.
	m2 := startMount(t, data2, mnt2, "-replica", url, "-restore-if-missing")
	if !strings.Contains(m2.log.String(), "took over the replica lease of an idle mount") || !strings.Contains(m2.log.String(), "data_dir="+data) {
		t.Fatalf("takeover log:\n%s", m2.log.String())
	}
	sqlite3Cmd(t, m2.Path("app.db"), "INSERT INTO t VALUES(2);")
	want := dbState(t, m2.Path("app.db"))
	waitReplicaReach(t, url, "app.db", lastTXID(t, data2, "app.db"), 30*time.Second)

	// The first mount's next commit: kept locally, refused as durable.
	before := lastTXID(t, data, "app.db")
	cmd := exec.Command("sqlite3", "-bail", m.Path("app.db"), "INSERT INTO t VALUES(99);")
	out2, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "disk I/O error") {
		t.Fatalf("commit on the mount that lost the lease: %v: %s", err, out2)
	}
	if got := lastTXID(t, data, "app.db"); got <= before {
		t.Fatalf("local history at txid %d after the refused commit, was %d", got, before)
	}
	if !waitFor(10*time.Second, func() bool {
		return strings.Contains(m.log.String(), "another sqlfs took over the replica lease; this mount no longer ships")
	}) || !strings.Contains(m.log.String(), "level=ERROR") || !strings.Contains(m.log.String(), "new_data_dir="+data2) {
		t.Fatalf("first mount's log:\n%s", m.log.String())
	}
	// Nothing of the first mount's reached the replica.
	checkReplicaRestore(t, url, want, "after the old mount's refused commit")
	if h, _ := readLease(t, url); h["data_dir"] != data2 {
		t.Fatalf("lease after the old mount's commit: %v", h)
	}
	m.Stop()
	m2.Stop()
}

// replicaLevelFiles counts db's files in the replica at url, in all and by
// level.
func replicaLevelFiles(t *testing.T, url, db string) (int, map[int]int) {
	t.Helper()
	r, err := ship.OpenReplica(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	total, per := 0, map[int]int{}
	for level := 0; level <= ship.SnapshotLevel; level++ {
		files, err := r.LTXFiles(context.Background(), db, level)
		if err != nil {
			t.Fatal(err)
		}
		per[level] = len(files)
		total += len(files)
	}
	return total, per
}
