package test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// replicaTXIDs lists the TXIDs a replica URL holds for one database with
// `sqlfs ltx -json URL -db NAME`, one per file (its max); nil when it has
// none yet.
func replicaTXIDs(t *testing.T, url, db string) []uint64 {
	t.Helper()
	var out []uint64
	for _, r := range replicaRanges(t, url, db) {
		out = append(out, r.Max)
	}
	return out
}

// replicaRanges lists the files a replica URL holds for one database.
func replicaRanges(t *testing.T, url, db string) []txRange {
	t.Helper()
	res := runSqlfs(t, "ltx", "-json", "-db", db, url)
	if res.code != 0 {
		if strings.Contains(res.stderr, "no history") {
			return nil
		}
		t.Fatalf("sqlfs ltx %s: exit %d: %s", url, res.code, res.stderr)
	}
	return parseLTXJSON(t, res.stdout)
}

// waitReplica waits until the replica's history of db is exactly 1..want.
func waitReplica(t *testing.T, url, db string, want uint64) {
	t.Helper()
	var got []uint64
	ok := waitFor(30*time.Second, func() bool {
		got = replicaTXIDs(t, url, db)
		return uint64(len(got)) == want && (want == 0 || got[len(got)-1] == want)
	})
	if !ok {
		t.Fatalf("replica %s has %d files of %s (last %v), want 1..%d", url, len(got), db, lastOf(got), want)
	}
	for i, x := range got {
		if x != uint64(i+1) {
			t.Fatalf("replica history of %s has a gap at %d: %v", db, i+1, got)
		}
	}
}

func lastOf(a []uint64) any {
	if len(a) == 0 {
		return "none"
	}
	return a[len(a)-1]
}

// restoreURL restores the latest state from a replica root, naming the
// database by the output's base name, as the playbook does.
func restoreURL(t *testing.T, url, out string, extra ...string) {
	t.Helper()
	args := append(append([]string{"restore", "-o", out}, extra...), url)
	if res := runSqlfs(t, args...); res.code != 0 {
		t.Fatalf("sqlfs %s: exit %d: %s", strings.Join(args, " "), res.code, res.stderr)
	}
}

// startReplicatedApp mounts a new data dir with -replica url (and extra
// flags), and commits rows rows to app.db's table t through the sqlite3 CLI.
func startReplicatedApp(t *testing.T, url string, rows int, extra ...string) (*Mount, *sqliteCLI) {
	t.Helper()
	data, mnt := newDirs(t)
	m := startMount(t, data, mnt, append([]string{"-replica", url}, extra...)...)
	cli := startWALTable(t, m)
	for i := range rows {
		cli.exec(t, fmt.Sprintf("INSERT INTO t(v) VALUES('row %d');", i))
	}
	settle(t, cli)
	return m, cli
}

// settle returns once history holds every commit cli made: in WAL mode sqlfs
// reads commits back from the WAL just after SQLite wrote them, and a
// checkpoint's first write to the database file waits until it has.
func settle(t *testing.T, cli *sqliteCLI) {
	t.Helper()
	cli.exec(t, "PRAGMA wal_checkpoint;")
}

// startWALTable starts a sqlite3 CLI on the mount's app.db, in WAL mode,
// with an empty table t(id, v).
func startWALTable(t *testing.T, m *Mount) *sqliteCLI {
	t.Helper()
	cli := startCLI(t, m.Path("app.db"))
	cli.exec(t, "PRAGMA journal_mode=WAL;")
	cli.exec(t, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
	return cli
}

// checkReplicaRestore restores the latest state from the replica root url and
// asserts it passes integrity_check and equals the state hash want.
func checkReplicaRestore(t *testing.T, url, want, what string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "app.db")
	restoreURL(t, url, out)
	integrityCheck(t, out)
	if got := dbState(t, out); got != want {
		t.Fatalf("%s: restore from %s differs from the live database", what, url)
	}
}

// TestReplicaFile: every commit reaches a file replica, restore from it equals
// the live database, replication resumes after a remount, and a replica that
// holds another history is left alone.
func TestReplicaFile(t *testing.T) {
	data, mnt := newDirs(t)
	rdir := t.TempDir()
	url := "file://" + rdir
	m := startMount(t, data, mnt, "-replica", url)
	cli := startWALTable(t, m)
	for i := range 40 {
		cli.exec(t, fmt.Sprintf("INSERT INTO t(v) VALUES('row %d');", i))
	}
	settle(t, cli)
	want := lastTXID(t, data, "app.db")
	waitReplica(t, url, "app.db", want)
	checkReplicaRestore(t, url, dbState(t, m.Path("app.db")), "file replica")
	cli.close(t)
	m.Stop()

	// Remount: commits made meanwhile ship, and new ones continue.
	m = startMount(t, data, mnt, "-replica", url)
	sqlite3Cmd(t, m.Path("app.db"), "INSERT INTO t(v) VALUES('after remount')")
	waitReplica(t, url, "app.db", lastTXID(t, data, "app.db"))
	live := dbState(t, m.Path("app.db"))
	checkReplicaRestore(t, url, live, "after remount")
	m.Stop()

	// Another data dir with its own app.db must not overwrite this replica.
	before := replicaTXIDs(t, url, "app.db")
	data2, mnt2 := newDirs(t)
	m2 := startMount(t, data2, mnt2, "-replica", url)
	sqlite3Cmd(t, m2.Path("app.db"), "CREATE TABLE other(x); INSERT INTO other VALUES(1);")
	if !waitFor(10*time.Second, func() bool { return strings.Contains(m2.log.String(), "differs") }) {
		t.Fatalf("no divergence error logged:\n%s", m2.log)
	}
	m2.Stop()
	if after := replicaTXIDs(t, url, "app.db"); len(after) != len(before) {
		t.Fatalf("replica changed from %d to %d files by a foreign history", len(before), len(after))
	}
	checkReplicaRestore(t, url, live, "after a foreign history tried to ship")
}

// TestReplicaSync: with -sync-replica, a commit with synchronous=FULL is in
// the replica when it returns to the application.
func TestReplicaSync(t *testing.T) {
	data, mnt := newDirs(t)
	rdir := t.TempDir()
	url := "file://" + rdir
	m := startMount(t, data, mnt, "-replica", url, "-sync-replica")
	db := openDB(t, m.Path("app.db"), "_journal_mode=WAL&_sync=FULL")
	if _, err := db.Exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err := db.Exec("INSERT INTO t(v) VALUES(?)", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		// No waiting: the commit returned, so the replica has it.
		n := lastTXID(t, data, "app.db")
		if got := replicaTXIDs(t, url, "app.db"); uint64(len(got)) != n {
			t.Fatalf("after commit %d: replica has %d of %d TXIDs", i, len(got), n)
		}
	}
	db.Close()
	m.Stop()
}
