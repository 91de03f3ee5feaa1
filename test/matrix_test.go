package test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// TestMatrix runs one workload for every journal mode × page size, through
// the sqlite3 CLI (synchronous=FULL) and through go-sqlite3
// (synchronous=NORMAL), each on its own mount; in WAL mode also through
// go-sqlite3 with synchronous=FULL and psow=0, where SQLite pads the WAL
// after each commit with copies of the commit frame. After every
// statement it records the TXID history ends at and the state SQLite sees;
// once (go-intercept) with -wal-capture intercept instead of the default;
// at the end every recorded TXID is restored and must hold that state.
func TestMatrix(t *testing.T) {
	needE2E(t)
	for _, mode := range []string{"WAL", "DELETE", "TRUNCATE", "PERSIST"} {
		for _, ps := range []int{512, 4096, 65536} {
			for _, drv := range []string{"cli", "go", "go-psow0", "go-intercept"} {
				if (drv == "go-psow0" && mode != "WAL") || (drv == "go-intercept" && (mode != "WAL" || ps != 4096)) {
					continue
				}
				t.Run(fmt.Sprintf("%s/%d/%s", mode, ps, drv), func(t *testing.T) {
					t.Parallel()
					runMatrixCase(t, mode, ps, drv)
				})
			}
		}
	}
}

// step is one statement (or script) of the workload and the number of
// SQLite commits it makes.
type step struct {
	name    string
	sql     string
	commits int
}

// matrixWorkload is the workload for a database created in journal mode
// mode with page size ps. Half-way it switches WAL→DELETE (or the rollback
// modes →WAL); the four checkpoint kinds run in whichever half is in WAL.
func matrixWorkload(mode string, ps int) []step {
	n := 0
	insert := func() step {
		n++
		return step{fmt.Sprintf("insert-%d", n),
			fmt.Sprintf(`INSERT INTO t(k, v) VALUES ('row-%d', randomblob(200));`, n), 1}
	}
	checkpoints := func() []step {
		var s []step
		for _, kind := range []string{"PASSIVE", "FULL", "RESTART", "TRUNCATE"} {
			s = append(s, step{"checkpoint-" + kind, fmt.Sprintf(`PRAGMA wal_checkpoint(%s);`, kind), 0}, insert())
		}
		return s
	}
	series := func(n int) string {
		return fmt.Sprintf(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<%d)`, n)
	}

	setupCommits := 0
	if mode == "WAL" {
		setupCommits = 1 // the switch to WAL writes page 1 of the new database
	}
	s := []step{
		{"setup", fmt.Sprintf(`PRAGMA page_size=%d; PRAGMA journal_mode=%s;`, ps, mode), setupCommits},
		{"create-table", `CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB);`, 1},
		{"create-index", `CREATE INDEX t_k ON t(k);`, 1},
		insert(), insert(), insert(),
	}
	if mode == "WAL" {
		s = append(s, checkpoints()...)
	}
	s = append(s,
		step{"spilled-transaction", `PRAGMA cache_size=2; BEGIN;
			INSERT INTO t(k, v) ` + series(3000) + ` SELECT 'big-' || x, randomblob(200) FROM c;
			UPDATE t SET v = randomblob(200) WHERE id % 5 = 0;
			COMMIT; PRAGMA cache_size=-2000;`, 1},
		step{"rollback", `BEGIN; INSERT INTO t(k, v) VALUES ('gone', randomblob(200));
			DELETE FROM t WHERE id <= 10; ROLLBACK;`, 0},
		step{"spilled-rollback", `PRAGMA cache_size=2; BEGIN;
			UPDATE t SET v = randomblob(210);
			INSERT INTO t(k, v) ` + series(500) + ` SELECT 'gone-' || x, randomblob(200) FROM c;
			ROLLBACK; PRAGMA cache_size=-2000;`, 0},
		insert(),
		step{"savepoint", `BEGIN;
			INSERT INTO t(k, v) VALUES ('sp-1', randomblob(200));
			SAVEPOINT a;
			INSERT INTO t(k, v) VALUES ('sp-2', randomblob(200));
			DELETE FROM t WHERE k LIKE 'big-1%';
			ROLLBACK TO a;
			INSERT INTO t(k, v) VALUES ('sp-3', randomblob(200));
			RELEASE a;
			COMMIT;`, 1},
	)
	if mode == "WAL" {
		s = append(s, step{"switch-to-DELETE", `PRAGMA journal_mode=DELETE;`, 1})
	} else {
		s = append(s, step{"switch-to-WAL", `PRAGMA journal_mode=WAL;`, 1})
	}
	s = append(s, insert(), insert())
	if mode != "WAL" {
		s = append(s, checkpoints()...)
	}
	s = append(s,
		step{"delete-many", `DELETE FROM t WHERE id % 3 <> 0;`, 1},
		step{"vacuum", `VACUUM;`, 1},
		insert(),
	)
	return s
}

// driver runs SQL against one database through one connection.
type driver interface {
	exec(t *testing.T, sql string)
	close(t *testing.T)
}

type cliDriver struct{ c *sqliteCLI }

func (d cliDriver) exec(t *testing.T, sql string) { t.Helper(); d.c.exec(t, sql) }
func (d cliDriver) close(t *testing.T)            { t.Helper(); d.c.close(t) }

type goDriver struct {
	db   *sql.DB
	conn *sql.Conn
}

func newGoDriver(t *testing.T, path, params string) goDriver {
	t.Helper()
	db := openDB(t, path, params)
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); db.Close() })
	return goDriver{db, conn}
}

func (d goDriver) exec(t *testing.T, sql string) {
	t.Helper()
	if _, err := d.conn.ExecContext(context.Background(), sql); err != nil {
		t.Fatalf("go-sqlite3: %s: %v", strings.TrimSpace(sql), err)
	}
}

func (d goDriver) close(t *testing.T) {
	t.Helper()
	if err := d.conn.Close(); err != nil {
		t.Errorf("close connection: %v", err)
	}
	if err := d.db.Close(); err != nil {
		t.Errorf("close database: %v", err)
	}
}

// record is what SQLite saw after one step, and where history stood.
type record struct {
	step  string
	txid  uint64
	state string
}

func runMatrixCase(t *testing.T, mode string, ps int, drv string) {
	data, mnt := newDirs(t)
	var flags []string
	if drv == "go-intercept" {
		flags = []string{"-wal-capture", "intercept"}
	}
	m := startMount(t, data, mnt, flags...)
	const name = "app.db"
	path := m.Path(name)

	var d driver
	switch drv {
	case "cli":
		d = cliDriver{startCLI(t, path)}
	case "go", "go-intercept":
		d = newGoDriver(t, path, "")
	case "go-psow0":
		d = newGoDriver(t, path, "_synchronous=FULL&psow=0")
	}

	var recs []record
	var txid uint64
	for _, s := range matrixWorkload(mode, ps) {
		d.exec(t, s.sql)
		want := txid + uint64(s.commits)
		got := waitTXID(t, data, name, want)
		if got != want {
			t.Errorf("after %s (%d commits): history ends at TXID %d, want %d", s.name, s.commits, got, want)
		}
		txid = got
		if txid > 0 {
			recs = append(recs, record{s.name, txid, dbState(t, path)})
		}
	}
	d.close(t)
	if got := lastTXID(t, data, name); got != txid {
		t.Errorf("closing the database moved history from TXID %d to %d", txid, got)
	}
	checkHistory(t, data, name, txid)
	checkRestores(t, data, name, recs)
	latest := filepath.Join(t.TempDir(), "latest.db")
	restore(t, data, name, 0, latest)
	if got := pageSize(t, latest); got != ps {
		t.Errorf("restored latest: page size %d, want %d", got, ps)
	}

	m.Stop()
	if got := lastTXID(t, data, name); got != txid {
		t.Errorf("unmounting moved history from TXID %d to %d", txid, got)
	}
}

// checkRestores restores every recorded TXID and compares it with the state
// SQLite saw when history stood there.
func checkRestores(t *testing.T, data, name string, recs []record) {
	t.Helper()
	dir := t.TempDir()
	restored := map[uint64]string{}
	for _, r := range recs {
		st, ok := restored[r.txid]
		if !ok {
			out := filepath.Join(dir, fmt.Sprintf("%016x.db", r.txid))
			restore(t, data, name, r.txid, out)
			integrityCheck(t, out)
			st = dbState(t, out)
			restored[r.txid] = st
		}
		if st != r.state {
			t.Errorf("TXID %d (after %s): restored state %.12s, SQLite saw %.12s", r.txid, r.step, st, r.state)
		}
	}
}

// TestVacuumPageSize changes the page size of a rollback-journal database
// with VACUUM, twice: each restored TXID has the page size and the content
// SQLite had at that commit.
func TestVacuumPageSize(t *testing.T) {
	needE2E(t)
	t.Parallel()
	data, mnt := newDirs(t)
	m := startMount(t, data, mnt)
	const name = "app.db"
	path := m.Path(name)
	d := newGoDriver(t, path, "")

	steps := []struct {
		sql      string
		pageSize int
	}{
		{`PRAGMA page_size=4096; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);`, 4096},
		{`INSERT INTO t(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<2000)
			SELECT randomblob(300) FROM c;`, 4096},
		{`PRAGMA page_size=1024; VACUUM;`, 1024},
		{`INSERT INTO t(v) VALUES (randomblob(300));`, 1024},
		{`PRAGMA page_size=65536; VACUUM;`, 65536},
		{`DELETE FROM t WHERE id % 2 = 0;`, 65536},
	}
	var recs []record
	for i, s := range steps {
		d.exec(t, s.sql)
		txid := waitTXID(t, data, name, uint64(i+1))
		if txid != uint64(i+1) {
			t.Errorf("step %d: history ends at TXID %d, want %d", i+1, txid, i+1)
		}
		recs = append(recs, record{fmt.Sprintf("step %d", i+1), txid, dbState(t, path)})
	}
	d.close(t)
	checkHistory(t, data, name, uint64(len(steps)))
	checkRestores(t, data, name, recs)
	dir := t.TempDir()
	for i, s := range steps {
		out := filepath.Join(dir, fmt.Sprintf("ps-%d.db", i+1))
		restore(t, data, name, uint64(i+1), out)
		if got := pageSize(t, out); got != s.pageSize {
			t.Errorf("TXID %d restored with page size %d, want %d", i+1, got, s.pageSize)
		}
	}
	m.Stop()
}
