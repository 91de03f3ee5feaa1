package test

import (
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
	s := &s3Server{t: t, bin: bin, dir: t.TempDir(), addr: addr}
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
	s.cmd = exec.Command(s.bin, "--access", s3Access, "--secret", s3Secret, "--port", s.addr, "posix", s.dir)
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
