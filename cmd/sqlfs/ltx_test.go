package main

import (
	"bytes"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// historyStart is the commit time of TXID 1 in test histories; TXID n
// committed n-1 seconds later.
var historyStart = time.Date(2024, 1, 15, 10, 30, 0, 0, time.UTC)

// sqliteStates returns the bytes of a real SQLite database after each of
// three commits.
func sqliteStates(t *testing.T) [][]byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "src.db")
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=DELETE")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	var states [][]byte
	for _, q := range []string{
		"CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
		"WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM s WHERE n < 500) INSERT INTO t (v) SELECT hex(randomblob(200)) FROM s",
		"UPDATE t SET v = 'x' WHERE id % 7 = 0",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		states = append(states, data)
	}
	return states
}

// writeHistory stores states (whole database files for TXIDs 1, 2, …) as the
// history of db in DATA/ltx: a snapshot, then the pages each commit changed.
func writeHistory(t *testing.T, data, db string, states [][]byte) {
	t.Helper()
	rep := ship.NewFileReplica(filepath.Join(data, "ltx"))
	var prev []byte
	var pre ltx.Checksum
	for i, state := range states {
		txid := ltx.TXID(i + 1)
		ps := uint32(binary.BigEndian.Uint16(state[16:18]))
		commit := uint32(len(state)) / ps
		var buf bytes.Buffer
		enc, _ := ltx.NewEncoder(&buf)
		if err := enc.EncodeHeader(ltx.Header{
			Version: ltx.Version, PageSize: ps, Commit: commit, MinTXID: txid, MaxTXID: txid,
			Timestamp: historyStart.Add(time.Duration(i) * time.Second).UnixMilli(), PreApplyChecksum: pre,
		}); err != nil {
			t.Fatal(err)
		}
		post := ltx.ChecksumFlag
		for pgno := uint32(1); pgno <= commit; pgno++ {
			page := state[(pgno-1)*ps : pgno*ps]
			if pgno == ltx.LockPgno(ps) {
				continue
			}
			post = ltx.ChecksumFlag | (post ^ ltx.ChecksumPage(pgno, page))
			if int(pgno*ps) > len(prev) || !bytes.Equal(page, prev[(pgno-1)*ps:pgno*ps]) {
				if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, page); err != nil {
					t.Fatal(err)
				}
			}
		}
		enc.SetPostApplyChecksum(post)
		if err := enc.Close(); err != nil {
			t.Fatal(err)
		}
		if err := rep.WriteLTX(db, 0, txid, txid, buf.Bytes(), false); err != nil {
			t.Fatal(err)
		}
		prev, pre = state, post
	}
}

// runCmd runs one command line and returns its exit code and output.
func runCmd(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestLTXTable(t *testing.T) {
	data := t.TempDir()
	writeHistory(t, data, "app.db", sqliteStates(t))
	code, stdout, stderr := runCmd("ltx", "-data", data)
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "min_txid          max_txid          size") || !strings.HasSuffix(lines[0], "level") {
		t.Fatalf("output:\n%s", stdout)
	}
	col := strings.Index(lines[0], "created")
	for i, line := range lines[1:] {
		f := strings.Fields(line)
		txid := ltx.TXID(i + 1).String()
		created := ltx.FormatTimestamp(historyStart.Add(time.Duration(i) * time.Second))
		if len(f) != 5 || f[0] != txid || f[1] != txid || f[3] != created || f[4] != "0" || strings.Index(line, created) != col {
			t.Fatalf("row %d: %q", i, line)
		}
	}
	if !strings.Contains(stdout, "2024-01-15T10:30:02.000Z") {
		t.Fatalf("timestamps are not RFC 3339 UTC with milliseconds:\n%s", stdout)
	}
}

func TestLTXJSON(t *testing.T) {
	data := t.TempDir()
	writeHistory(t, data, "app.db", sqliteStates(t))
	root := filepath.Join(data, "ltx")
	for _, args := range [][]string{
		{"ltx", "-json", "-data", data, "-db", "app.db"},
		{"ltx", "-json", "file://" + filepath.Join(root, "app.db")},
		{"ltx", "file://" + root, "-json", "-db", "app.db"},
	} {
		code, stdout, stderr := runCmd(args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
		var rows []map[string]any
		if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, stdout)
		}
		if len(rows) != 3 {
			t.Fatalf("%v: %d rows", args, len(rows))
		}
		r := rows[1]
		if r["level"] != 0.0 || r["min_txid"] != "0000000000000002" || r["max_txid"] != "0000000000000002" ||
			r["size"].(float64) <= 0 || r["created"] != "2024-01-15T10:30:01.000Z" || len(r) != 5 {
			t.Fatalf("%v: row %v", args, r)
		}
	}
}

func TestLTXErrors(t *testing.T) {
	data := t.TempDir()
	states := sqliteStates(t)
	writeHistory(t, data, "app.db", states)
	writeHistory(t, data, "other.db", states[:1])
	root := filepath.Join(data, "ltx")
	empty := t.TempDir()
	for _, tt := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"-data", data}, 2, "sqlfs ltx: " + root + " holds several databases (app.db, other.db): choose one with -db\n"},
		{[]string{"-data", data, "-db", "nope.db"}, 1, "sqlfs ltx: no history for database nope.db in " + root + " (it has app.db, other.db)\n"},
		{[]string{"-data", empty}, 1, "sqlfs ltx: data dir " + empty + " holds no history (" + filepath.Join(empty, "ltx") + " does not exist)\n"},
		{[]string{"-data", data, "file://" + root}, 2, "sqlfs ltx: give -data or a replica URL, not both\n"},
		{[]string{"gs://bucket/x"}, 2, "sqlfs ltx: unknown replica URL scheme \"gs\" (want file:// or s3://)\n"},
		{[]string{"file://relative/x"}, 2, "sqlfs ltx: replica URL \"file://relative/x\": a file URL needs an absolute path (file:///abs/path)\n"},
		{[]string{"file://" + filepath.Join(empty, "nope")}, 1, "sqlfs ltx: replica file://" + filepath.Join(empty, "nope") + " does not exist\n"},
		{[]string{"-replica", "file://" + root, "file://" + root}, 2, "sqlfs ltx: give the replica URL as an argument or with -replica, not both\n"},
		{[]string{"file://" + filepath.Join(root, "app.db"), "-db", "other.db"}, 2, "sqlfs ltx: file://" + filepath.Join(root, "app.db") + " holds the history of app.db, not -db other.db\n"},
		{[]string{"-bogus"}, 2, "sqlfs ltx: flag provided but not defined: -bogus\n"},
	} {
		code, stdout, stderr := runCmd(append([]string{"ltx"}, tt.args...)...)
		if code != tt.code || stderr != tt.msg || stdout != "" {
			t.Errorf("%v: exit %d, stderr %q, stdout %q; want exit %d, %q", tt.args, code, stderr, stdout, tt.code, tt.msg)
		}
	}
}

func TestParseTXID(t *testing.T) {
	for s, want := range map[string]ltx.TXID{"1": 1, "10": 0x10, "2a": 0x2a, "2A": 0x2a, "0000000000001000": 0x1000, "ffffffffffffffff": ^ltx.TXID(0)} {
		if got, err := parseTXID(s); err != nil || got != want {
			t.Errorf("parseTXID(%q) = %s, %v; want %s", s, got, err, want)
		}
	}
	for _, s := range []string{"", "g", "0x10", "-1", "+1", "1_0", "00000000000000001", " 1"} {
		if got, err := parseTXID(s); err == nil {
			t.Errorf("parseTXID(%q) = %s, want an error", s, got)
		}
	}
}
