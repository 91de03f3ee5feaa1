package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeConfig writes a config file and makes it the default for this test.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sqlfs.yml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	old := defaultConfig
	defaultConfig = path
	t.Cleanup(func() { defaultConfig = old })
	return path
}

func TestConfigFile(t *testing.T) {
	states := sqliteStates(t)
	a, b := t.TempDir(), t.TempDir()
	writeHistory(t, a, "app.db", states)
	writeHistory(t, b, "app.db", states[:2])
	t.Setenv("SQLFS_TEST_DATA", a)
	cfg := writeConfig(t, "# the data dir comes from the environment\ndata: ${SQLFS_TEST_DATA}\nparallelism: 2\n")

	last := func(stdout string) string {
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		return strings.Fields(lines[len(lines)-1])[1]
	}
	for _, c := range []struct {
		name string
		args []string
		want string // the last TXID listed
	}{
		{"default file, $VAR expanded", []string{"ltx"}, "0000000000000003"},
		{"-config", []string{"ltx", "-config", cfg}, "0000000000000003"},
		{"flag wins", []string{"ltx", "-data", b}, "0000000000000002"},
		{"flag after -config wins", []string{"ltx", "-config", cfg, "-data", b}, "0000000000000002"},
	} {
		code, stdout, stderr := runCmd(c.args...)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", c.name, code, stderr)
		}
		if got := last(stdout); got != c.want {
			t.Errorf("%s: history ends at %s, want %s", c.name, got, c.want)
		}
	}

	// A replica in the config is where restore reads from, unless -data
	// is given.
	writeConfig(t, "replica: file://"+filepath.Join(b, "ltx")+"\ndata: "+a+"\n")
	out := filepath.Join(t.TempDir(), "app.db")
	if code, _, stderr := runCmd("restore", "-o", out); code != 0 || !strings.Contains(stderr, "txid 0000000000000002") {
		t.Fatalf("restore from the config's replica: exit %d: %s", code, stderr)
	}
	out = filepath.Join(t.TempDir(), "app.db")
	if code, _, stderr := runCmd("restore", "-o", out, "-data", a); code != 0 || !strings.Contains(stderr, "txid 0000000000000003") {
		t.Fatalf("restore -data over the config's replica: exit %d: %s", code, stderr)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.yml")
	for _, c := range []struct {
		name, text string
		args       []string
		msg        string // after "sqlfs CMD: config FILE: "
	}{
		{"unknown key", "data: /x\nreplcia: s3://b/p\n", []string{"ltx"}, `line 2: unknown key "replcia" (want one of data, mount-point, replica, sync-replica, sync-timeout, shutdown-timeout, restore-if-missing, exec, parallelism, integrity-check, levels, snapshot-interval, retention-l0, retention, max-backlog, max-lag, max-put-rate, page-cache-mib)`},
		{"not YAML", "data: [unclosed\n", []string{"ltx"}, "line 1: did not find expected ',' or ']'"},
		{"not a mapping", "- data\n", []string{"ltx"}, "line 1: want a mapping of keys to values (data: /var/lib/sqlfs)"},
		{"twice", "data: /a\ndata: /b\n", []string{"ltx"}, "line 2: data given twice"},
		{"list value", "data:\n  - /a\n", []string{"ltx"}, "line 2: data: want a single value"},
		{"bad duration", "sync-timeout: soon\n", []string{"mount", "/nonexistent"}, `line 1: sync-timeout: invalid value "soon": parse error`},
		{"bad number", "parallelism: many\n", []string{"restore", "-o", filepath.Join(dir, "x.db")}, `line 1: parallelism: invalid value "many": parse error`},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := writeConfig(t, c.text)
			code, stdout, stderr := runCmd(c.args...)
			want := "sqlfs " + c.args[0] + ": config " + path + ": " + c.msg + "\n"
			if code != 2 || stdout != "" || stderr != want {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit 2, %q", code, stdout, stderr, want)
			}
		})
	}
	code, _, stderr := runCmd("ltx", "-config", missing)
	if want := "sqlfs ltx: config " + missing + ": no such file or directory\n"; code != 2 || stderr != want {
		t.Errorf("missing -config file: exit %d, %q; want 2, %q", code, stderr, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.db")); err == nil {
		t.Error("restore with a bad config wrote its output")
	}
}
