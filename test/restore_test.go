package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRestoreBadInput: every way to call restore wrongly, and every broken
// replica, gives one line on stderr naming the problem, a non-zero exit, and
// no file at all in the output directory.
func TestRestoreBadInput(t *testing.T) {
	s3, url, m, last := replicatedDB(t, 5)
	m.Stop()

	// File replicas copied from the S3 server's files (versitygw keeps
	// each object as a file): one with a damaged file, one with a gap.
	corrupt, gap := copyDir(t, filepath.Join(s3.dir, s3Bucket, "backup")), copyDir(t, filepath.Join(s3.dir, s3Bucket, "backup"))
	damaged := filepath.Join(corrupt, ltxName("app.db", 4))
	b, err := os.ReadFile(damaged)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(damaged, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(gap, ltxName("app.db", 3))); err != nil {
		t.Fatal(err)
	}

	outDir := t.TempDir()
	out := filepath.Join(outDir, "app.db")
	precious := filepath.Join(t.TempDir(), "app.db")
	writeFile(t, precious, "do not overwrite")
	past := fmt.Sprintf("%016x", last+1)
	for _, c := range []struct {
		name    string
		env     []string
		args    []string // -o is added unless the case gives it
		code    int
		mention []string
	}{
		{"txid not hex", nil, []string{"-txid", "xyz", url}, 2, []string{"-txid xyz", "hex"}},
		{"txid past the end", nil, []string{"-txid", past, url}, 1, []string{past, fmt.Sprintf("ends at %016x", last)}},
		{"unparseable timestamp", nil, []string{"-timestamp", "yesterday", url}, 2, []string{"yesterday", "RFC 3339"}},
		{"timestamp before the first commit", nil, []string{"-timestamp", "2000-01-01T00:00:00Z", url}, 1, []string{"2000-01-01T00:00:00Z", "starts at txid 0000000000000001"}},
		{"txid and timestamp", nil, []string{"-txid", "1", "-timestamp", "2000-01-01T00:00:00Z", url}, 2, []string{"-txid or -timestamp"}},
		{"missing file replica", nil, []string{"file:///nonexistent/replica"}, 1, []string{"file:///nonexistent/replica", "does not exist"}},
		{"empty S3 prefix", nil, []string{s3.url("nothing-here")}, 1, []string{"no history", "app.db", "s3://backup/nothing-here"}},
		{"missing bucket", nil, []string{"s3://no-such-bucket/prod"}, 1, []string{`bucket "no-such-bucket" does not exist`}},
		{"wrong credentials", []string{"AWS_SECRET_ACCESS_KEY=wrong"}, []string{url}, 1, []string{"rejected the credentials"}},
		{"unknown access key", []string{"AWS_ACCESS_KEY_ID=nobody"}, []string{url}, 1, []string{"rejected the credentials"}},
		{"unknown URL scheme", nil, []string{"gs://bucket/prod"}, 2, []string{`scheme "gs"`}},
		{"output exists", nil, []string{"-o", precious, url}, 1, []string{precious, "already exists"}},
		{"output directory missing", nil, []string{"-o", filepath.Join(outDir, "nodir", "app.db"), url}, 1, []string{filepath.Join(outDir, "nodir"), "does not exist"}},
		{"corrupt LTX file", nil, []string{"file://" + corrupt}, 1, []string{ltxName("app.db", 4), "corrupt"}},
		{"gap in history", nil, []string{"file://" + gap}, 1, []string{"missing txids 0000000000000003 through 0000000000000003"}},
		{"parallelism zero", nil, []string{"-parallelism", "0", url}, 2, []string{"-parallelism 0"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"restore"}
			if !strings.Contains(strings.Join(c.args, " "), "-o ") {
				args = append(args, "-o", out)
			}
			start := time.Now()
			r := runSqlfsEnv(t, c.env, append(args, c.args...)...)
			t.Logf("exit %d: %s", r.code, strings.TrimSpace(r.stderr))
			wantError(t, r, c.mention...)
			if r.code != c.code {
				t.Errorf("exit code %d, want %d", r.code, c.code)
			}
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("took %v to fail", d)
			}
			if names := dirNames(t, outDir); len(names) != 0 {
				t.Errorf("restore left %v in the output directory", names)
			}
		})
	}
	if got := readFile(t, precious); got != "do not overwrite" {
		t.Errorf("existing output now holds %q", got)
	}

	// Restores to a TXID before the damaged file, or the missing one,
	// still work.
	for _, c := range []struct{ url, txid string }{{"file://" + corrupt, "3"}, {"file://" + gap, "2"}} {
		ok := filepath.Join(t.TempDir(), "app.db")
		restoreURL(t, c.url, ok, "-txid", c.txid)
		integrityCheck(t, ok)
	}
}

// copyDir copies the tree under src into a new directory.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	if out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	return dst
}

// ltxName is the path of one commit's file in a replica, relative to its root.
func ltxName(db string, txid uint64) string {
	return filepath.Join(db, "0000", fmt.Sprintf("%016x-%016x.ltx", txid, txid))
}
