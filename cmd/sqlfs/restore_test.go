package main

import (
	"bytes"
	"database/sql"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestRestoreCommand(t *testing.T) {
	data := t.TempDir()
	states := sqliteStates(t)
	writeHistory(t, data, "app.db", states)
	root := filepath.Join(data, "ltx")

	for _, tt := range []struct {
		name  string
		args  []string // -o OUT is added
		out   string   // base name of the output
		state int      // index into states
		txid  string
	}{
		{name: "latest", args: []string{"-data", data}, out: "app.db", state: 2, txid: "0000000000000003"},
		{name: "short txid", args: []string{"-data", data, "-txid", "2"}, out: "app.db", state: 1, txid: "0000000000000002"},
		{name: "full txid", args: []string{"-txid", "0000000000000001", "-data", data}, out: "app.db", state: 0, txid: "0000000000000001"},
		{name: "db flag", args: []string{"-data", data, "-db", "app.db"}, out: "copy.db", state: 2, txid: "0000000000000003"},
		{name: "root URL", args: []string{"file://" + root}, out: "app.db", state: 2, txid: "0000000000000003"},
		{name: "database URL, flags after", args: []string{"file://" + filepath.Join(root, "app.db"), "-txid", "2"}, out: "other.db", state: 1, txid: "0000000000000002"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), tt.out)
			args := append([]string{"restore", "-o", out}, tt.args...)
			code, stdout, stderr := runCmd(args...)
			if code != 0 || stdout != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
			}
			pages := len(states[tt.state]) / 4096
			want := "restored app.db at txid " + tt.txid + " (" + strconv.Itoa(pages) + " pages, 4096 bytes/page) to " + out + "\n"
			if stderr != want {
				t.Fatalf("stderr %q, want %q", stderr, want)
			}
			got, err := os.ReadFile(out)
			if err != nil || !bytes.Equal(got, states[tt.state]) {
				t.Fatalf("restored file differs from the source (%v)", err)
			}
			db, err := sql.Open("sqlite3", "file:"+out+"?mode=ro")
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var ok string
			if err := db.QueryRow("PRAGMA integrity_check").Scan(&ok); err != nil || ok != "ok" {
				t.Fatalf("integrity_check: %q, %v", ok, err)
			}
		})
	}
}

func TestRestoreCommandErrors(t *testing.T) {
	data := t.TempDir()
	writeHistory(t, data, "app.db", sqliteStates(t))
	root := filepath.Join(data, "ltx")

	for _, tt := range []struct {
		name  string
		args  []string // OUT in an argument is replaced by the output path
		setup func(dir string)
		code  int
		msg   string // stderr after "sqlfs restore: ", one line; OUT and DIR are replaced
	}{
		{name: "missing -o", args: []string{"-data", data}, code: 2, msg: "missing -o PATH: where to write the restored database"},
		{name: "txid not hex", args: []string{"-o", "OUT", "-data", data, "-txid", "zz"}, code: 2, msg: "-txid zz: not a hex TXID like 000000000000002a"},
		{name: "txid zero", args: []string{"-o", "OUT", "-data", data, "-txid", "0"}, code: 2, msg: "-txid 0: TXIDs start at 1"},
		{name: "txid past the end", args: []string{"-o", "OUT", "-data", data, "-txid", "99"}, code: 1,
			msg: "txid 0000000000000099 not found: history of app.db ends at 0000000000000003"},
		{name: "output exists", args: []string{"-o", "OUT", "-data", data}, code: 1,
			setup: func(dir string) { os.WriteFile(filepath.Join(dir, "app.db"), []byte("keep"), 0o644) },
			msg:   "OUT already exists; restore never overwrites a file"},
		{name: "output dir missing", args: []string{"-o", "DIR/nope/app.db", "-data", data}, code: 1,
			msg: "output directory DIR/nope does not exist"},
		{name: "no history", args: []string{"-o", "DIR/other.db", "-data", data}, code: 1,
			msg: "no history for database other.db in " + root + " (it has app.db)"},
		{name: "unknown flag", args: []string{"-o", "OUT", "-data", data, "-bogus"}, code: 2, msg: "flag provided but not defined: -bogus"},
		{name: "two URLs", args: []string{"-o", "OUT", "file://" + root, "file://" + root}, code: 2,
			msg: "unexpected arguments after file://" + root + ": file://" + root},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "app.db")
			if tt.setup != nil {
				tt.setup(dir)
			}
			before := listDir(t, dir)
			var args []string
			for _, a := range tt.args {
				a = strings.ReplaceAll(a, "OUT", out)
				args = append(args, strings.ReplaceAll(a, "DIR", dir))
			}
			code, stdout, stderr := runCmd(append([]string{"restore"}, args...)...)
			msg := strings.ReplaceAll(strings.ReplaceAll(tt.msg, "OUT", out), "DIR", dir)
			if code != tt.code || stdout != "" || stderr != "sqlfs restore: "+msg+"\n" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, %q", code, stdout, stderr, tt.code, msg)
			}
			if after := listDir(t, dir); after != before {
				t.Fatalf("output directory changed: %q, was %q", after, before)
			}
		})
	}
}

// listDir describes a directory's entries and sizes.
func listDir(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range ents {
		info, _ := e.Info()
		b.WriteString(e.Name() + ":" + strconv.Itoa(int(info.Size())) + " ")
	}
	return b.String()
}
