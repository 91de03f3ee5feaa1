package test

// The scenarios of the recovery playbook (docs/recovery.md), each run end to
// end against the real S3 server: the commands the playbook gives, and what
// a user checks afterwards.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// stamp returns the current time as -timestamp takes it (milliseconds, as
// LTX headers record commit times) and waits until the clock has moved
// past it, so every commit after stamp returns is later than the stamp.
func stamp(t *testing.T) string {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Millisecond)
	waitFor(time.Second, func() bool { return time.Now().UTC().Truncate(time.Millisecond).After(now) })
	return now.Format("2006-01-02T15:04:05.000Z07:00")
}

// sqliteOK runs the playbook's check, sqlite3 PATH "PRAGMA integrity_check;".
func sqliteOK(t *testing.T, path string) {
	t.Helper()
	if got := strings.TrimSpace(sqlite3Cmd(t, path, "PRAGMA integrity_check;")); got != "ok" {
		t.Fatalf("integrity_check of %s: %s", path, got)
	}
}

// mustRun runs a sqlfs command that must succeed and returns its stdout.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	r := runSqlfs(t, args...)
	if r.code != 0 {
		t.Fatalf("sqlfs %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// replicatedDB starts the S3 server and a mount replicating to prefix
// "backup" in it, commits rows rows to app.db with the sqlite3 CLI, closes
// it, and waits until the replica has every commit, the nth the last.
func replicatedDB(t *testing.T, rows int) (s3 *s3Server, url string, m *Mount, n uint64) {
	t.Helper()
	s3 = startS3(t)
	url = s3.url("backup")
	m, cli := startReplicatedApp(t, url, rows)
	cli.close(t)
	n = lastTXID(t, m.Data, "app.db")
	waitReplica(t, url, "app.db", n)
	return s3, url, m, n
}

// Scenario 1: the server is gone. The database comes back from the replica
// into a fresh directory.
func TestRecoveryCompleteLoss(t *testing.T) {
	_, url, m, _ := replicatedDB(t, 50)
	live := dbState(t, m.Path("app.db"))
	m.Stop()
	if err := os.RemoveAll(m.Data); err != nil { // the server failed
		t.Fatal(err)
	}

	listing := mustRun(t, "ltx", url, "-db", "app.db")
	if !strings.HasPrefix(listing, "min_txid") || strings.Count(listing, "\n") < 3 {
		t.Fatalf("sqlfs ltx lists no backups:\n%s", listing)
	}
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(dir, 0o755); err != nil { // mkdir -p /data
		t.Fatal(err)
	}
	out := filepath.Join(dir, "app.db")
	mustRun(t, "restore", "-integrity-check", "-o", out, url)
	sqliteOK(t, out)
	if dbState(t, out) != live {
		t.Fatal("restored database differs from the one lost")
	}
}

// Scenario 2: the database is corrupted, and sqlfs faithfully recorded the
// damage too. Restore to a time before it, check, and put it back through
// the mount, so history and the replica continue from the repaired state.
func TestRecoveryCorruption(t *testing.T) {
	_, url, m, n := replicatedDB(t, 200)
	good := dbState(t, m.Path("app.db"))
	before := stamp(t)

	// A disk error: garbage over the middle of the table's root page,
	// written by something that is not SQLite.
	f, err := os.OpenFile(m.Path("app.db"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	ps := int64(pageSize(t, m.Path("app.db")))
	if _, err := f.WriteAt([]byte(strings.Repeat("\xde\xad\xbe\xef", 64)), ps+ps/2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if !waitFor(10*time.Second, func() bool { return lastTXID(t, m.Data, "app.db") > n }) {
		t.Fatal("the damage was not recorded as a commit")
	}
	waitReplica(t, url, "app.db", lastTXID(t, m.Data, "app.db"))

	// The latest backup holds the damage: -integrity-check refuses it.
	recovered := filepath.Join(t.TempDir(), "app.db")
	r := runSqlfs(t, "restore", "-integrity-check", "-o", recovered, url)
	wantError(t, r, "integrity_check")
	wantMissing(t, recovered)

	// Find a time before the corruption in the listing, and restore to it.
	if listing := mustRun(t, "ltx", url, "-db", "app.db"); !strings.Contains(listing, before[:13]) {
		t.Fatalf("listing shows no commit around %s:\n%s", before, listing)
	}
	mustRun(t, "restore", "-integrity-check", "-timestamp", before, "-o", recovered, url)
	sqliteOK(t, recovered)
	if dbState(t, recovered) != good {
		t.Fatal("restore to before the corruption differs from the database then")
	}

	// Back into production through the mount: one more commit, shipped.
	if out, err := exec.Command("cp", recovered, m.Path("app.db")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	sqliteOK(t, m.Path("app.db"))
	waitReplica(t, url, "app.db", lastTXID(t, m.Data, "app.db"))
	checkReplicaRestore(t, url, good, "after the repair")
	m.Stop()
}

// Scenario 3: rows deleted by mistake come back from a recovery copy of the
// database before the deletion, applied to production through the mount.
func TestRecoveryAccidentalDeletion(t *testing.T) {
	s3 := startS3(t)
	url := s3.url("backup")
	m, cli := startReplicatedApp(t, url, 30)
	before := stamp(t)
	cli.exec(t, "DELETE FROM t WHERE id % 3 = 1;") // the mistake
	cli.exec(t, "INSERT INTO t(v) VALUES('written after the mistake');")
	settle(t, cli)
	waitReplica(t, url, "app.db", lastTXID(t, m.Data, "app.db"))

	// Restore to a recovery database; the URL names the database's own
	// replica, so the output's name does not matter.
	recovery := filepath.Join(t.TempDir(), "recovery.db")
	mustRun(t, "restore", "-timestamp", before, "-o", recovery, url+"/app.db")
	if n := strings.TrimSpace(sqlite3Cmd(t, recovery, "SELECT count(*) FROM t;")); n != "30" {
		t.Fatalf("recovery copy has %s rows, want 30", n)
	}
	// Extract the deleted rows as INSERTs and apply them to production.
	lost := sqlite3Cmd(t, recovery, ".mode insert t\nSELECT * FROM t WHERE id % 3 = 1;")
	if strings.Count(lost, "INSERT INTO") != 10 {
		t.Fatalf("extracted:\n%s", lost)
	}
	sqlite3Cmd(t, m.Path("app.db"), lost)
	got := cli.exec(t, "SELECT count(*), sum(v = 'written after the mistake') FROM t;")
	if strings.TrimSpace(got) != "31|1" {
		t.Fatalf("production after the repair: %q, want 31 rows with the later one kept", got)
	}
	cli.close(t)
	waitReplica(t, url, "app.db", lastTXID(t, m.Data, "app.db"))
	checkReplicaRestore(t, url, dbState(t, m.Path("app.db")), "after applying the recovered rows")
	m.Stop()
}

// Scenario 4: a new server, with the old one's configuration file: mount
// -restore-if-missing brings the database back and replication continues
// from the replica's TXID.
func TestRecoveryServerMigration(t *testing.T) {
	_, url, old, n := replicatedDB(t, 40)
	old.Stop()

	// The configuration of the new server, with its paths from the
	// environment.
	data, mnt := newDirs(t)
	t.Setenv("SQLFS_TEST_DATA", data)
	cfg := filepath.Join(t.TempDir(), "sqlfs.yml")
	writeFile(t, cfg, fmt.Sprintf("data: ${SQLFS_TEST_DATA}\nmount-point: %s\nreplica: %s\nrestore-if-missing: true\n", mnt, url))
	m := startMountArgs(t, data, mnt, "mount", "-config", cfg)
	if !strings.Contains(m.log.String(), "restored from the replica") {
		t.Fatalf("no restore logged:\n%s", m.log)
	}
	sqliteOK(t, m.Path("app.db"))
	sqlite3Cmd(t, m.Path("app.db"), "INSERT INTO t(v) VALUES('on the new server');")
	checkHistory(t, data, "app.db", n+1)
	waitReplica(t, url, "app.db", n+1)
	checkReplicaRestore(t, url, dbState(t, m.Path("app.db")), "after the migration")
	m.Stop()

	// A restart finds the database there and restores nothing.
	m = startMountArgs(t, data, mnt, "mount", "-config", cfg)
	if strings.Contains(m.log.String(), "restored") {
		t.Fatalf("restored again at restart:\n%s", m.log)
	}
	m.Stop()
}

// Scenario 5: a development copy of production, sanitised, while production
// and its replica stay as they are.
func TestRecoveryDevRefresh(t *testing.T) {
	s3 := startS3(t)
	url := s3.url("production-backup")
	m, cli := startReplicatedApp(t, url, 0)
	cli.exec(t, "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT, password_hash TEXT);")
	cli.exec(t, "INSERT INTO users(email, password_hash) VALUES('ann@corp.example', 'h1'), ('bob@corp.example', 'h2');")
	live := dbState(t, m.Path("app.db"))
	settle(t, cli)
	waitReplica(t, url, "app.db", lastTXID(t, m.Data, "app.db"))
	files := len(replicaTXIDs(t, url, "app.db"))

	dev := filepath.Join(t.TempDir(), "dev.db")
	mustRun(t, "restore", "-o", dev, "-db", "app.db", url)
	sqlite3Cmd(t, dev, "UPDATE users SET email = 'test' || id || '@example.com';\nUPDATE users SET password_hash = 'invalidated';")
	if got := sqlite3Cmd(t, dev, "SELECT email, password_hash FROM users ORDER BY id;"); got != "test1@example.com|invalidated\ntest2@example.com|invalidated\n" {
		t.Fatalf("dev copy: %q", got)
	}
	if dbState(t, m.Path("app.db")) != live || len(replicaTXIDs(t, url, "app.db")) != files {
		t.Fatal("the development copy changed production or its replica")
	}
	cli.close(t)
	m.Stop()
}

// The automated recovery of a container: an entrypoint that restores when
// the database is missing and there is a replica, then runs the application
// under mount -exec. First boot (empty replica), a boot on a new host (the
// database comes from the replica and replication continues), a restart
// with the database in place, and SIGTERM from the orchestrator.
func TestRecoveryEntrypoint(t *testing.T) {
	needE2E(t)
	s3 := startS3(t)
	url := s3.url("backup")
	bin := filepath.Dir(sqlfsBin)
	entry := filepath.Join(t.TempDir(), "entrypoint.sh")
	writeFile(t, entry, `#!/bin/sh
set -e
mkdir -p "$DATA/root"
sqlfs restore -if-db-not-exists -if-replica-exists -o "$DATA/root/app.db" "$REPLICA_URL"
exec sqlfs mount -data "$DATA" -replica "$REPLICA_URL" -exec "$*" "$MNT"
`)
	os.Chmod(entry, 0o755)
	boot := func(data, mnt, app string) (int, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, entry, app)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "DATA="+data, "MNT="+mnt, "REPLICA_URL="+url)
		out, err := cmd.CombinedOutput()
		if fuseState(mnt) != fuseNone {
			unix.Unmount(mnt, unix.MNT_DETACH)
			t.Fatalf("the entrypoint left a mount at %s\n%s", mnt, out)
		}
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("entrypoint: %v\n%s", err, out)
		}
		if ee != nil {
			return ee.ExitCode(), string(out)
		}
		return 0, string(out)
	}

	// First boot: nothing to restore; the app creates its database and
	// exits 0, and sqlfs flushes every commit to the replica before it exits.
	data1, mnt1 := newDirs(t)
	app := `sqlite3 "$MNT/app.db" "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES('boot 1');"`
	if code, out := boot(data1, mnt1, app); code != 0 || !strings.Contains(out, "nothing restored (-if-replica-exists)") {
		t.Fatalf("first boot: exit %d\n%s", code, out)
	}
	n := uint64(len(replicaTXIDs(t, url, "app.db")))
	if n == 0 || n != lastTXID(t, data1, "app.db") {
		t.Fatalf("replica has %d commits after the first boot, local history %d", n, lastTXID(t, data1, "app.db"))
	}

	// A new host: restored, history continues, and the app's exit code is
	// sqlfs's.
	data2, mnt2 := newDirs(t)
	app = `sqlite3 "$MNT/app.db" "INSERT INTO t(v) VALUES('boot 2');" && exit 3`
	if code, out := boot(data2, mnt2, app); code != 3 || !strings.Contains(out, "restored app.db at txid") {
		t.Fatalf("second boot: exit %d, want 3\n%s", code, out)
	}
	checkHistory(t, data2, "app.db", n+1)
	waitReplica(t, url, "app.db", n+1)

	// A restart with the database in place: no restore.
	app = `sqlite3 "$MNT/app.db" "INSERT INTO t(v) VALUES('boot 3');"`
	if code, out := boot(data2, mnt2, app); code != 0 || !strings.Contains(out, "exists; nothing restored (-if-db-not-exists)") {
		t.Fatalf("restart: exit %d\n%s", code, out)
	}
	waitReplica(t, url, "app.db", n+2)
	out := filepath.Join(t.TempDir(), "app.db")
	restoreURL(t, url, out)
	if got := sqlite3Cmd(t, out, "SELECT group_concat(v, ',') FROM t;"); got != "boot 1,boot 2,boot 3\n" {
		t.Fatalf("replica holds %q", got)
	}

	// SIGTERM to sqlfs goes to the app first; sqlfs exits with its code.
	marker := filepath.Join(t.TempDir(), "term")
	cmd := exec.Command(sqlfsBin, "mount", "-data", data2, "-replica", url, "-exec",
		fmt.Sprintf(`trap 'sqlite3 "%s/app.db" "INSERT INTO t(v) VALUES(\"on TERM\")"; touch %s; exit 7' TERM; touch %s.up; while :; do sleep 0.05; done`, mnt2, marker, marker), mnt2)
	var log syncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill() // by PID; a no-op once it has exited
		if fuseState(mnt2) != fuseNone {
			unix.Unmount(mnt2, unix.MNT_DETACH)
		}
	})
	if !waitFor(20*time.Second, func() bool { return exists(marker + ".up") }) {
		t.Fatalf("the app did not start\n%s", log.String())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("sqlfs did not exit within 30 s of SIGTERM\n%s", log.String())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 || !exists(marker) {
		t.Fatalf("after SIGTERM: %v (want exit 7 from the app's trap), marker %v\n%s", err, exists(marker), log.String())
	}
	if fuseState(mnt2) != fuseNone {
		t.Fatalf("mount left behind after -exec ended")
	}
	waitReplica(t, url, "app.db", n+3)
}
