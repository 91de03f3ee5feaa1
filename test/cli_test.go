package test

import (
	"bytes"
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

	"golang.org/x/sys/unix"
)

// wantError asserts that a command failed as DESIGN.md says: exit code ≠ 0
// and exactly one line on stderr, which mentions each of mention.
func wantError(t *testing.T, r cliResult, mention ...string) {
	t.Helper()
	if r.code == 0 {
		t.Errorf("exit code 0, want ≠ 0 (stdout %q, stderr %q)", r.stdout, r.stderr)
	}
	msg := strings.TrimSuffix(r.stderr, "\n")
	if msg == "" || strings.Contains(msg, "\n") {
		t.Errorf("stderr is not exactly one line:\n%s", r.stderr)
	}
	for _, s := range mention {
		if !strings.Contains(msg, s) {
			t.Errorf("error %q does not name %q", msg, s)
		}
	}
}

// mountMustFail runs `sqlfs mount` with args, which must fail rather than
// mount; if it mounts after all it is stopped and the test fails.
func mountMustFail(t *testing.T, args ...string) cliResult {
	t.Helper()
	needE2E(t)
	args = append([]string{"mount"}, args...)
	cmd := exec.Command(sqlfsBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		t.Fatalf("sqlfs %s did not fail: it was still running after 20 s\n%s", strings.Join(args, " "), stderr.String())
	}
	r := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

func wantMissing(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s was created (or is there: %v)", path, err)
	}
}

func TestMountErrors(t *testing.T) {
	needE2E(t)

	t.Run("missing-mount-point", func(t *testing.T) {
		t.Parallel()
		base := t.TempDir()
		data, mnt := filepath.Join(base, "data"), filepath.Join(base, "nope")
		r := mountMustFail(t, "-data", data, mnt)
		wantError(t, r, mnt)
		wantMissing(t, mnt)
		wantMissing(t, data)
	})

	t.Run("busy-mount-point", func(t *testing.T) {
		t.Parallel()
		data, mnt := newDirs(t)
		m := startMount(t, data, mnt)
		writeFile(t, m.Path("hello"), "first mount")
		data2 := filepath.Join(t.TempDir(), "data2")
		r := mountMustFail(t, "-data", data2, mnt)
		wantError(t, r, mnt)
		wantMissing(t, data2)
		if got := readFile(t, m.Path("hello")); got != "first mount" {
			t.Errorf("first mount serves %q after the refused mount", got)
		}
		if n := len(mountsAt(mnt)); n != 1 {
			t.Errorf("%d mounts at %s, want the first mount only", n, mnt)
		}
		m.Stop()
	})

	t.Run("data-dir-under-a-file", func(t *testing.T) {
		t.Parallel()
		base := t.TempDir()
		file := filepath.Join(base, "file")
		writeFile(t, file, "not a directory")
		mnt := filepath.Join(base, "mnt")
		os.Mkdir(mnt, 0o755)
		data := filepath.Join(file, "data")
		r := mountMustFail(t, "-data", data, mnt)
		wantError(t, r, data)
		if st := fuseState(mnt); st != fuseNone {
			t.Errorf("mount point is %s after the failed mount", st)
		}
		if got := readFile(t, file); got != "not a directory" {
			t.Errorf("the file in the data path was changed to %q", got)
		}
	})

	t.Run("read-only-data-dir", func(t *testing.T) {
		t.Parallel()
		base := t.TempDir()
		data, mnt := filepath.Join(base, "data"), filepath.Join(base, "mnt")
		os.Mkdir(data, 0o755)
		os.Mkdir(mnt, 0o755)
		if err := unix.Mount("tmpfs", data, "tmpfs", 0, "size=16m"); err != nil {
			t.Skipf("cannot mount a tmpfs: %v", err)
		}
		t.Cleanup(func() { unix.Unmount(data, unix.MNT_DETACH) })
		for _, d := range []string{"root", "ltx", "state"} {
			os.Mkdir(filepath.Join(data, d), 0o755)
		}
		if err := unix.Mount("", data, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			t.Fatalf("remount tmpfs read-only: %v", err)
		}
		r := mountMustFail(t, "-data", data, mnt)
		wantError(t, r, data)
		if st := fuseState(mnt); st != fuseNone {
			t.Errorf("mount point is %s after the failed mount", st)
		}
	})

	t.Run("second-mount-same-data-dir", func(t *testing.T) {
		t.Parallel()
		data, mnt := newDirs(t)
		m := startMount(t, data, mnt)
		sqlite3Cmd(t, m.Path("app.db"), `CREATE TABLE t(x); INSERT INTO t VALUES (1);`)
		mnt2 := filepath.Join(t.TempDir(), "mnt2")
		os.Mkdir(mnt2, 0o755)
		r := mountMustFail(t, "-data", data, mnt2)
		wantError(t, r, data)
		if st := fuseState(mnt2); st != fuseNone {
			t.Errorf("second mount point is %s after the refused mount", st)
		}
		sqlite3Cmd(t, m.Path("app.db"), `INSERT INTO t VALUES (2);`)
		checkHistory(t, data, "app.db", 3)
		m.Stop()
	})

	for _, cmd := range []string{"mount", "ltx", "restore"} {
		t.Run("unknown-flag-"+cmd, func(t *testing.T) {
			t.Parallel()
			base := t.TempDir()
			data, mnt := filepath.Join(base, "data"), filepath.Join(base, "mnt")
			os.Mkdir(mnt, 0o755)
			var r cliResult
			switch cmd {
			case "mount":
				r = mountMustFail(t, "-data", data, "-bogus-flag", mnt)
			case "ltx":
				r = runSqlfs(t, "ltx", "-bogus-flag", "-data", data, "-db", "app.db")
			case "restore":
				r = runSqlfs(t, "restore", "-bogus-flag", "-o", filepath.Join(base, "out.db"), "-data", data, "-db", "app.db")
				wantMissing(t, filepath.Join(base, "out.db"))
			}
			wantError(t, r, "bogus-flag")
			wantMissing(t, data)
			if st := fuseState(mnt); st != fuseNone {
				t.Errorf("mount point is %s", st)
			}
		})
	}
}

func TestRestoreErrors(t *testing.T) {
	needE2E(t)
	t.Parallel()
	data, mnt := newDirs(t)
	m := startMount(t, data, mnt)
	sqlite3Cmd(t, m.Path("app.db"), `PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);`)
	m.Stop()
	checkHistory(t, data, "app.db", 3)
	before := dirListing(t, data)

	outDir := t.TempDir()
	out := filepath.Join(outDir, "out.db")
	cases := []struct {
		name    string
		args    []string
		mention []string
	}{
		{"txid-past-end", []string{"-txid", "0000000000000004"}, []string{"0000000000000004"}},
		{"txid-far-past-end", []string{"-txid", "1000"}, []string{"1000"}},
		{"txid-not-hex", []string{"-txid", "xyz"}, []string{"xyz"}},
		{"unknown-db", []string{"-db", "nope.db"}, []string{"nope.db"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"restore", "-o", out, "-data", data, "-db", "app.db"}, c.args...)
			r := runSqlfs(t, args...)
			wantError(t, r, c.mention...)
			if names := dirNames(t, outDir); len(names) != 0 {
				t.Errorf("restore left %v in the output directory", names)
			}
		})
	}

	t.Run("existing-output", func(t *testing.T) {
		precious := filepath.Join(outDir, "precious.db")
		writeFile(t, precious, "do not overwrite")
		old := time.Now().Add(-time.Hour)
		os.Chtimes(precious, old, old)
		r := runSqlfs(t, "restore", "-o", precious, "-data", data, "-db", "app.db")
		wantError(t, r, precious)
		if got := readFile(t, precious); got != "do not overwrite" {
			t.Errorf("existing output now holds %q", got)
		}
		if fi, err := os.Stat(precious); err != nil || !fi.ModTime().Equal(old) {
			t.Errorf("existing output was touched: %v %v", fi.ModTime(), err)
		}
		if names := dirNames(t, outDir); len(names) != 1 {
			t.Errorf("restore left %v in the output directory", names)
		}
		os.Remove(precious)
	})

	if after := dirListing(t, data); after != before {
		t.Errorf("failed restores changed the data dir:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestCopyIntoMount copies database files into the mount with cp (no SQLite
// involved): each copy becomes one new TXID holding exactly the copied file.
func TestCopyIntoMount(t *testing.T) {
	needE2E(t)
	t.Parallel()
	src := t.TempDir()
	newDB := func(name string, rows int) (path, state string) {
		path = filepath.Join(src, name)
		sqlite3Cmd(t, path, fmt.Sprintf(`PRAGMA page_size=4096; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
			INSERT INTO t(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<%d)
			SELECT randomblob(300) FROM c;`, rows))
		return path, dbState(t, path)
	}
	srcA, stateA := newDB("a.db", 500)
	srcB, stateB := newDB("b.db", 900)

	data, mnt := newDirs(t)
	m := startMount(t, data, mnt)
	cp := func(from, to string) {
		t.Helper()
		if out, err := exec.Command("cp", from, to).CombinedOutput(); err != nil {
			t.Fatalf("cp %s %s: %v: %s", from, to, err, out)
		}
	}
	// The copy is captured when the file is closed; the kernel may deliver
	// the release a moment after cp exits.
	waitTXID := func(db string, want uint64) {
		t.Helper()
		waitFor(5*time.Second, func() bool { return lastTXID(t, data, db) >= want })
		checkHistory(t, data, db, want)
	}

	t.Run("new-file", func(t *testing.T) {
		cp(srcA, m.Path("copy.db"))
		waitTXID("copy.db", 1)
		out := filepath.Join(t.TempDir(), "copy.db")
		restore(t, data, "copy.db", 1, out)
		integrityCheck(t, out)
		if got := dbState(t, out); got != stateA {
			t.Errorf("restore of TXID 1 after cp: state %.12s, copied file %.12s", got, stateA)
		}
		if got := dbState(t, m.Path("copy.db")); got != stateA {
			t.Errorf("the copy in the mount: state %.12s, copied file %.12s", got, stateA)
		}
	})

	t.Run("over-a-live-database", func(t *testing.T) {
		path := m.Path("app.db")
		sqlite3Cmd(t, path, `CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t(v) VALUES (randomblob(100));`)
		checkHistory(t, data, "app.db", 2)
		before := dbState(t, path)
		cp(srcB, path)
		waitTXID("app.db", 3)
		dir := t.TempDir()
		restore(t, data, "app.db", 3, filepath.Join(dir, "3.db"))
		restore(t, data, "app.db", 2, filepath.Join(dir, "2.db"))
		integrityCheck(t, filepath.Join(dir, "3.db"))
		if got := dbState(t, filepath.Join(dir, "3.db")); got != stateB {
			t.Errorf("restore of TXID 3 (the cp): state %.12s, copied file %.12s", got, stateB)
		}
		if got := dbState(t, filepath.Join(dir, "2.db")); got != before {
			t.Errorf("restore of TXID 2 (before the cp): state %.12s, want %.12s", got, before)
		}
		// SQLite carries on from the copied file.
		sqlite3Cmd(t, path, `INSERT INTO t(v) VALUES (randomblob(100));`)
		checkHistory(t, data, "app.db", 4)
		restore(t, data, "app.db", 4, filepath.Join(dir, "4.db"))
		if got, want := dbState(t, filepath.Join(dir, "4.db")), dbState(t, path); got != want {
			t.Errorf("restore of TXID 4 (after the cp): state %.12s, live %.12s", got, want)
		}
	})
	m.Stop()
}

// TestTwoProcesses has go-sqlite3 (this process) and the sqlite3 CLI (another
// process) write one WAL database through the mount at the same time.
func TestTwoProcesses(t *testing.T) {
	needE2E(t)
	t.Parallel()
	data, mnt := newDirs(t)
	m := startMount(t, data, mnt)
	const name, perWriter = "app.db", 300
	path := m.Path(name)

	db := openDB(t, path, "_journal_mode=WAL")
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT, n INT, v BLOB)`); err != nil {
		t.Fatal(err)
	}
	const setup = 2 // journal_mode=WAL on a new database, CREATE TABLE
	cli := startCLI(t, path)

	var wg sync.WaitGroup
	var goErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < perWriter && goErr == nil; i++ {
			_, goErr = db.Exec(`INSERT INTO t(who, n, v) VALUES ('go', ?, randomblob(150))`, i)
			if i%50 == 0 && goErr == nil {
				goErr = db.QueryRow(`SELECT count(*) FROM t`).Scan(new(int))
			}
		}
	}()
	var script strings.Builder
	for i := 0; i < perWriter; i++ {
		fmt.Fprintf(&script, "INSERT INTO t(who, n, v) VALUES ('cli', %d, randomblob(150));\n", i)
		if i%50 == 0 {
			script.WriteString("SELECT count(*) FROM t;\n")
		}
	}
	_, cliErr := cli.try(script.String())
	wg.Wait()
	if goErr != nil || cliErr != nil {
		t.Fatalf("writers: go-sqlite3: %v; sqlite3: %v", goErr, cliErr)
	}
	cli.close(t)

	var interleaved int
	if err := db.QueryRow(`SELECT count(*) FROM t a JOIN t b ON b.id = a.id + 1 WHERE a.who <> b.who`).Scan(&interleaved); err != nil {
		t.Fatal(err)
	}
	if interleaved == 0 {
		t.Logf("the two writers did not interleave (one finished before the other started)")
	}
	db.Close()

	var rows int
	live := openDB(t, path, "")
	live.QueryRow(`SELECT count(*) FROM t`).Scan(&rows)
	live.Close()
	if rows != 2*perWriter {
		t.Errorf("%d rows, want %d", rows, 2*perWriter)
	}
	checkHistory(t, data, name, setup+2*perWriter)
	out := filepath.Join(t.TempDir(), "latest.db")
	restore(t, data, name, 0, out)
	integrityCheck(t, out)
	integrityCheck(t, path)
	if got, want := dbState(t, out), dbState(t, path); got != want {
		t.Errorf("restore of latest: state %.12s, live %.12s", got, want)
	}
	m.Stop()
}

// TestRestartContinuity unmounts cleanly and mounts again twice: TXIDs
// continue where they stopped, and every TXID restores to what SQLite saw.
func TestRestartContinuity(t *testing.T) {
	needE2E(t)
	t.Parallel()
	data, mnt := newDirs(t)
	const name = "app.db"
	var recs []record
	var txid uint64
	commit := func(m *Mount, label, sql string) {
		t.Helper()
		sqlite3Cmd(t, m.Path(name), sql)
		got := lastTXID(t, data, name)
		if got != txid+1 {
			t.Errorf("%s: history ends at TXID %d, want %d", label, got, txid+1)
		}
		txid = got
		recs = append(recs, record{label, txid, dbState(t, m.Path(name))})
	}

	m := startMount(t, data, mnt)
	commit(m, "wal", `PRAGMA journal_mode=WAL;`)
	commit(m, "create", `CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);`)
	for i := 0; i < 3; i++ {
		commit(m, fmt.Sprintf("mount1-insert-%d", i), `INSERT INTO t(v) VALUES (randomblob(500));`)
	}
	m.Stop()

	m = startMount(t, data, mnt)
	for i := 0; i < 3; i++ {
		commit(m, fmt.Sprintf("mount2-insert-%d", i), `INSERT INTO t(v) VALUES (randomblob(500));`)
	}
	commit(m, "mount2-to-delete", `PRAGMA journal_mode=DELETE;`)
	commit(m, "mount2-update", `UPDATE t SET v = randomblob(600) WHERE id % 2 = 0;`)
	m.Stop()

	m = startMount(t, data, mnt)
	for i := 0; i < 3; i++ {
		commit(m, fmt.Sprintf("mount3-insert-%d", i), `INSERT INTO t(v) VALUES (randomblob(500));`)
	}
	commit(m, "mount3-delete", `DELETE FROM t WHERE id < 4;`)
	commit(m, "mount3-vacuum", `VACUUM;`)
	m.Stop()

	checkHistory(t, data, name, txid)
	checkRestores(t, data, name, recs)
}

// ---- small file helpers ------------------------------------------------------

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// dirListing lists every file under dir with its size, one per line.
func dirListing(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if fi, err := d.Info(); err == nil && !d.IsDir() {
			fmt.Fprintf(&b, "%s %d\n", strings.TrimPrefix(path, dir), fi.Size())
		}
		return nil
	})
	return b.String()
}
