// Package test holds sqlfs's end-to-end tests: real FUSE mounts of the sqlfs
// binary, real SQLite (the Debian sqlite3 CLI and mattn/go-sqlite3), and the
// sqlfs CLI to list and restore history.
//
// Invariant: every sqlfs process a test starts is ended by that test, even
// when it fails: t.Cleanup sends SIGTERM to the PID it started, waits, and as
// a last resort kills it and detaches its mount. No test touches a process
// or mount it did not create.
package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	"golang.org/x/sys/unix"
)

// sqlfsBin is the sqlfs binary built once for this test binary.
var sqlfsBin string

// e2eSkip is why end-to-end tests cannot run here ("" when they can).
var e2eSkip string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	// S3 only on loopback: the AWS SDK must not look for EC2 credentials.
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	switch {
	case os.Geteuid() != 0:
		e2eSkip = "end-to-end tests mount FUSE directly and need root"
	case !exists("/dev/fuse"):
		e2eSkip = "/dev/fuse is missing"
	}
	if _, err := exec.LookPath("sqlite3"); err != nil && e2eSkip == "" {
		e2eSkip = "the sqlite3 CLI is not installed"
	}
	dir, err := os.MkdirTemp("", "sqlfs-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	sqlfsBin = filepath.Join(dir, "sqlfs")
	build := exec.Command(goTool(), "build", "-o", sqlfsBin, "github.com/sqlfs/sqlfs/cmd/sqlfs")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building sqlfs: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); exists(p) {
		return p
	}
	return "go"
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// needE2E skips t when this machine cannot run end-to-end tests.
func needE2E(t *testing.T) {
	t.Helper()
	if e2eSkip != "" {
		t.Skip(e2eSkip)
	}
}

// waitFor polls cond until it returns true or the deadline passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---- mounts -----------------------------------------------------------------

// Mount is a running `sqlfs mount` process started by a test.
type Mount struct {
	t    *testing.T
	Data string // data dir
	Dir  string // mount point

	cmd     *exec.Cmd
	log     *syncBuffer
	done    chan struct{} // closed when the process has exited
	waitErr error
}

// startMount runs `sqlfs mount -data data [flags] mnt` and returns once the mount is
// up. The mount is stopped when the test ends, whatever happens.
func startMount(t *testing.T, data, mnt string, flags ...string) *Mount {
	t.Helper()
	m, err := tryStartMount(t, data, mnt, flags...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// tryStartMount is startMount returning why sqlfs did not mount instead of
// failing the test.
func tryStartMount(t *testing.T, data, mnt string, flags ...string) (*Mount, error) {
	t.Helper()
	return launchMount(t, nil, data, mnt, mountArgs(data, mnt, flags)...)
}

// mountArgs is `mount -data data flags... mnt`; with data "" the flags say
// where history comes from (-replica).
func mountArgs(data, mnt string, flags []string) []string {
	args := []string{"mount"}
	if data != "" {
		args = append(args, "-data", data)
	}
	return append(append(args, flags...), mnt)
}

// startMountEnv is startMount with extra environment variables for sqlfs.
func startMountEnv(t *testing.T, env []string, data, mnt string, flags ...string) *Mount {
	t.Helper()
	m, err := launchMount(t, env, data, mnt, mountArgs(data, mnt, flags)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// startMountArgs runs sqlfs with args (a mount command whose mount point
// is mnt and data dir data, however args say so, e.g. in a config file)
// and returns once the mount is up, as startMount does.
func startMountArgs(t *testing.T, data, mnt string, args ...string) *Mount {
	t.Helper()
	m, err := launchMount(t, nil, data, mnt, args...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// launchMount runs sqlfs with args and extra environment variables env and
// returns once the mount at mnt is up.
func launchMount(t *testing.T, env []string, data, mnt string, args ...string) (*Mount, error) {
	t.Helper()
	needE2E(t)
	m := &Mount{t: t, Data: data, Dir: mnt, log: &syncBuffer{}, done: make(chan struct{})}
	m.cmd = exec.Command(sqlfsBin, args...)
	if env != nil {
		m.cmd.Env = append(os.Environ(), env...)
	}
	m.cmd.Stdout = m.log
	m.cmd.Stderr = m.log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start sqlfs mount: %v", err)
	}
	go func() { m.waitErr = m.cmd.Wait(); close(m.done) }()
	t.Cleanup(m.cleanup)

	// Mount IDs are reused, so "up" is: a FUSE filesystem answers at mnt
	// (a stale mount left by a killed sqlfs answers ENOTCONN).
	up := waitFor(15*time.Second, func() bool { return m.exited() || fuseState(mnt) == fuseLive })
	switch {
	case m.exited():
		return nil, fmt.Errorf("sqlfs mount %s exited before mounting: %v\n%s", mnt, m.waitErr, m.log)
	case !up:
		return nil, fmt.Errorf("sqlfs mount %s: not mounted after 15 s\n%s", mnt, m.log)
	}
	return m, nil
}

func (m *Mount) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// Path is the path of name inside the mount.
func (m *Mount) Path(name string) string { return filepath.Join(m.Dir, name) }

// Stop ends the mount with SIGTERM and fails the test unless sqlfs exits 0
// and the mount is gone.
func (m *Mount) Stop() {
	m.t.Helper()
	if m.exited() {
		m.t.Errorf("sqlfs mount %s had already exited: %v\n%s", m.Dir, m.waitErr, m.log)
		return
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(30 * time.Second):
		m.t.Errorf("sqlfs mount %s did not exit within 30 s of SIGTERM\n%s", m.Dir, m.log)
		m.forceEnd()
		return
	}
	if m.waitErr != nil {
		m.t.Errorf("sqlfs mount %s: exit after SIGTERM: %v (want 0)\n%s", m.Dir, m.waitErr, m.log)
	}
	if st := fuseState(m.Dir); st != fuseNone {
		m.t.Errorf("sqlfs mount %s exited 0 but left a FUSE mount behind (%s)", m.Dir, st)
	}
}

// Kill9 kills sqlfs with SIGKILL and waits for it to die, leaving its mount
// point stale, as a crash would.
func (m *Mount) Kill9() {
	m.t.Helper()
	m.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		m.t.Fatalf("sqlfs (pid %d) still running 10 s after SIGKILL", m.cmd.Process.Pid)
	}
}

func (m *Mount) cleanup() {
	if m.t.Failed() {
		m.t.Logf("sqlfs mount %s log:\n%s", m.Dir, tail(m.log.String(), 60))
	}
	if !m.exited() {
		m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(30 * time.Second):
			m.t.Errorf("sqlfs mount %s did not exit within 30 s of SIGTERM", m.Dir)
		}
	}
	m.forceEnd()
}

// forceEnd kills the process if it still runs and detaches the mount it
// left at its mount point: one that no server answers any more (a live
// mount there belongs to a later sqlfs of the same test).
func (m *Mount) forceEnd() {
	if !m.exited() {
		m.cmd.Process.Signal(syscall.SIGKILL)
		<-m.done
	}
	for i := 0; i < 4 && fuseState(m.Dir) == fuseStale; i++ {
		unix.Unmount(m.Dir, unix.MNT_DETACH)
	}
}

type mountState string

const (
	fuseNone  mountState = "none"  // no FUSE filesystem mounted there
	fuseLive  mountState = "live"  // a FUSE server answers there
	fuseStale mountState = "stale" // a FUSE mount whose server is gone (ENOTCONN)
	fuseOther mountState = "other" // a FUSE mount that fails otherwise
)

// fuseState says whether a FUSE filesystem is mounted at dir and answers.
// statfs always reaches the server, unlike stat, which the kernel may answer
// from its attribute cache.
func fuseState(dir string) mountState {
	if !slices.ContainsFunc(mountsAt(dir), func(fstype string) bool { return strings.HasPrefix(fstype, "fuse") }) {
		return fuseNone
	}
	var st unix.Statfs_t
	switch err := unix.Statfs(dir, &st); {
	case err == nil && st.Type == unix.FUSE_SUPER_MAGIC:
		return fuseLive
	case err == nil:
		return fuseNone // something else mounted on top
	case errors.Is(err, syscall.ENOTCONN):
		return fuseStale
	default:
		return fuseOther
	}
}

// mountsAt returns the filesystem types mounted at dir, bottom first, from
// /proc/self/mountinfo.
func mountsAt(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var types []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || unescapeMount(f[4]) != dir {
			continue
		}
		if i := slices.Index(f, "-"); i > 0 && i+1 < len(f) {
			types = append(types, f[i+1])
		}
	}
	return types
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// newDirs returns a fresh data dir and mount point for one mount.
func newDirs(t *testing.T) (data, mnt string) {
	t.Helper()
	base := t.TempDir()
	data, mnt = filepath.Join(base, "data"), filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	return data, mnt
}

// ---- the sqlfs CLI ----------------------------------------------------------

// cliResult is what one sqlfs command did.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runSqlfs runs one short sqlfs command (not mount's foreground run).
func runSqlfs(t *testing.T, args ...string) cliResult {
	t.Helper()
	return runSqlfsEnv(t, nil, args...)
}

// runSqlfsEnv is runSqlfs with env (KEY=value) added to the environment.
func runSqlfsEnv(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sqlfsBin, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		res.code = ee.ExitCode()
	default:
		t.Fatalf("sqlfs %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return res
}

// txRange is one LTX file: the TXIDs it holds.
type txRange struct{ Min, Max uint64 }

// ltxList lists db's level-0 history with `sqlfs ltx -json`, oldest first.
// A database with no history directory has an empty list.
func ltxList(t *testing.T, data, db string) []txRange {
	t.Helper()
	if !exists(filepath.Join(data, "ltx", db)) {
		return nil
	}
	r := runSqlfs(t, "ltx", "-json", "-data", data, "-db", db)
	if r.code != 0 {
		t.Fatalf("sqlfs ltx -json -data %s -db %s: exit %d: %s", data, db, r.code, r.stderr)
	}
	return parseLTXJSON(t, r.stdout)
}

// parseLTXJSON reads the level-0 ranges of `sqlfs ltx -json` output. The
// levels above (compactions every 30 s by default, on wall-clock
// boundaries) are left out: they repeat what level 0 holds.
func parseLTXJSON(t *testing.T, stdout string) []txRange {
	t.Helper()
	var rows []struct {
		Min   json.RawMessage `json:"min_txid"`
		Max   json.RawMessage `json:"max_txid"`
		Level int             `json:"level"`
	}
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
		t.Fatalf("sqlfs ltx -json: %v\n%s", err, stdout)
	}
	var out []txRange
	for _, row := range rows {
		if row.Level == 0 {
			out = append(out, txRange{parseJSONTXID(t, row.Min), parseJSONTXID(t, row.Max)})
		}
	}
	return out
}

// parseJSONTXID accepts a TXID as a hex string (as ltx.TXID marshals) or a number.
func parseJSONTXID(t *testing.T, raw json.RawMessage) uint64 {
	t.Helper()
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		v, err := strconv.ParseUint(s, 16, 64)
		if err != nil {
			t.Fatalf("sqlfs ltx -json: bad TXID %s", raw)
		}
		return v
	}
	var n uint64
	if err := json.Unmarshal(raw, &n); err != nil {
		t.Fatalf("sqlfs ltx -json: bad TXID %s", raw)
	}
	return n
}

// lastTXID is the newest TXID in db's history (0: none).
func lastTXID(t *testing.T, data, db string) uint64 {
	t.Helper()
	h := ltxList(t, data, db)
	if len(h) == 0 {
		return 0
	}
	return h[len(h)-1].Max
}

// waitTXID waits until db's history reaches want, which takes a moment in
// WAL mode, where sqlfs reads each commit back from the WAL just after SQLite
// wrote it. It returns the last TXID then (or at the deadline).
func waitTXID(t *testing.T, data, db string, want uint64) uint64 {
	t.Helper()
	var got uint64
	waitFor(5*time.Second, func() bool {
		got = lastTXID(t, data, db)
		return got >= want
	})
	return got
}

// checkHistory asserts db's history is TXIDs 1..want, one file per commit,
// with no gap.
func checkHistory(t *testing.T, data, db string, want uint64) {
	t.Helper()
	h := ltxList(t, data, db)
	var next uint64 = 1
	for _, r := range h {
		if r.Min != next || r.Max != r.Min {
			t.Errorf("history of %s: file %016x-%016x where %016x-%016x was expected (want one file per TXID, 1..%d)\nhistory: %v",
				db, r.Min, r.Max, next, next, want, h)
			return
		}
		next++
	}
	if next-1 != want {
		t.Errorf("history of %s ends at TXID %d, want %d", db, next-1, want)
	}
}

// restore writes db as of txid (0: latest) to out with `sqlfs restore`.
func restore(t *testing.T, data, db string, txid uint64, out string) {
	t.Helper()
	args := []string{"restore", "-o", out}
	if txid != 0 {
		args = append(args, "-txid", fmt.Sprintf("%016x", txid))
	}
	args = append(args, "-data", data, "-db", db)
	r := runSqlfs(t, args...)
	if r.code != 0 {
		t.Fatalf("sqlfs %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
	}
}

// ---- SQLite -----------------------------------------------------------------

// openDB opens path with go-sqlite3 on one connection.
func openDB(t *testing.T, path, params string) *sql.DB {
	t.Helper()
	dsn := "file:" + path + "?_busy_timeout=10000"
	if params != "" {
		dsn += "&" + params
	}
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	return db
}

// dbState is the canonical content hash of the database at path: sha256 over
// the schema and every row of every table in rowid order, read with
// go-sqlite3. Two databases with the same state hold the same data.
func dbState(t *testing.T, path string) string {
	t.Helper()
	db := openDB(t, path, "")
	defer db.Close()
	h := sha256.New()
	var tables []string
	rows, err := db.Query(`SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema ORDER BY type, name`)
	if err != nil {
		t.Fatalf("state of %s: %v", path, err)
	}
	for rows.Next() {
		var typ, name, tbl, text string
		if err := rows.Scan(&typ, &name, &tbl, &text); err != nil {
			t.Fatalf("state of %s: %v", path, err)
		}
		fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00", typ, name, tbl, text)
		if typ == "table" && !strings.HasPrefix(text, "CREATE VIRTUAL") {
			tables = append(tables, name)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("state of %s: %v", path, err)
	}
	rows.Close()
	for _, name := range tables {
		hashTable(t, db, path, name, h)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func hashTable(t *testing.T, db *sql.DB, path, name string, h io.Writer) {
	t.Helper()
	q := `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
	rows, err := db.Query(`SELECT * FROM ` + q + ` ORDER BY rowid`)
	if err != nil {
		rows, err = db.Query(`SELECT * FROM ` + q) // WITHOUT ROWID: primary-key order
	}
	if err != nil {
		t.Fatalf("state of %s: table %s: %v", path, name, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	fmt.Fprintf(h, "table %s %d\x00", name, len(cols))
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatalf("state of %s: table %s: %v", path, name, err)
		}
		for _, v := range vals {
			switch v := v.(type) {
			case []byte:
				fmt.Fprintf(h, "b%d:", len(v))
				h.Write(v)
			case nil:
				io.WriteString(h, "n")
			default:
				fmt.Fprintf(h, "%T:%v\x00", v, v)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("state of %s: table %s: %v", path, name, err)
	}
}

// integrityCheck fails the test unless PRAGMA integrity_check says "ok".
func integrityCheck(t *testing.T, path string) {
	t.Helper()
	db := openDB(t, path, "")
	defer db.Close()
	var lines []string
	rows, err := db.Query(`PRAGMA integrity_check`)
	if err != nil {
		t.Errorf("integrity_check %s: %v", path, err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		rows.Scan(&s)
		lines = append(lines, s)
	}
	if err := rows.Err(); err != nil {
		t.Errorf("integrity_check %s: %v", path, err)
	} else if len(lines) != 1 || lines[0] != "ok" {
		t.Errorf("integrity_check %s: %s", path, tail(strings.Join(lines, "\n"), 10))
	}
}

// pageSize reads PRAGMA page_size of the database at path.
func pageSize(t *testing.T, path string) int {
	t.Helper()
	db := openDB(t, path, "")
	defer db.Close()
	var n int
	if err := db.QueryRow(`PRAGMA page_size`).Scan(&n); err != nil {
		t.Fatalf("page_size of %s: %v", path, err)
	}
	return n
}

// sqliteCLI is a long-lived `sqlite3` process fed statements on stdin.
type sqliteCLI struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *os.File
	out    *bufio.Reader
	stderr *syncBuffer
	n      int
	done   chan struct{}
}

// startCLI starts `sqlite3 -bail path`; it is ended when the test ends.
func startCLI(t *testing.T, path string) *sqliteCLI {
	t.Helper()
	c := &sqliteCLI{stderr: &syncBuffer{}, done: make(chan struct{})}
	c.cmd = exec.Command("sqlite3", "-bail", path)
	c.cmd.Stderr = c.stderr
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c.cmd.Stdout = pw
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	c.stdout, c.out = pr, bufio.NewReader(pr)
	go func() { c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.stdin.Close()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			c.cmd.Process.Kill()
			<-c.done
		}
		pr.Close()
	})
	c.exec(t, ".timeout 10000")
	return c
}

// exec runs sql and returns its output once the CLI has finished it.
func (c *sqliteCLI) exec(t *testing.T, sql string) string {
	t.Helper()
	out, err := c.try(sql)
	if err != nil {
		t.Fatalf("sqlite3: %s: %v", sql, err)
	}
	return out
}

// try is exec returning the error instead of failing the test.
func (c *sqliteCLI) try(sql string) (string, error) {
	c.n++
	sentinel := fmt.Sprintf("__sqlfs_test_done_%d__", c.n)
	if _, err := fmt.Fprintf(c.stdin, "%s\n.print %s\n", sql, sentinel); err != nil {
		return "", fmt.Errorf("write: %v; stderr: %s", err, c.stderr)
	}
	c.stdout.SetReadDeadline(time.Now().Add(3 * time.Minute))
	var out strings.Builder
	for {
		line, err := c.out.ReadString('\n')
		if err != nil {
			return out.String(), fmt.Errorf("%v; stderr: %s", err, strings.TrimSpace(c.stderr.String()))
		}
		if strings.TrimRight(line, "\n") == sentinel {
			return out.String(), nil
		}
		out.WriteString(line)
	}
}

// close ends the CLI (closing its database) and waits for it to exit.
func (c *sqliteCLI) close(t *testing.T) {
	t.Helper()
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("sqlite3 did not exit within 30 s of end of input")
	}
	if s := c.stderr.String(); s != "" {
		t.Errorf("sqlite3 stderr: %s", s)
	}
}

// sqlite3Cmd runs one sqlite3 CLI invocation and returns its stdout.
func sqlite3Cmd(t *testing.T, path, sql string) string {
	t.Helper()
	cmd := exec.Command("sqlite3", "-bail", path)
	cmd.Stdin = strings.NewReader(sql)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("sqlite3 %s: %v: %s", path, err, stderr.String())
	}
	return stdout.String()
}

// ---- small things -----------------------------------------------------------

// syncBuffer is a bytes.Buffer safe for a process's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// freeBytes is the space available to an unprivileged user on dir's filesystem.
func freeBytes(t *testing.T, dir string) uint64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Bavail * uint64(st.Bsize)
}
