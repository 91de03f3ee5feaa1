package restore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/superfly/ltx"
)

// sqliteHistory builds the history of a real SQLite database through a
// grow, updates, a shrink, and two page-size changes.
func sqliteHistory(t *testing.T) *history {
	t.Helper()
	h := newHistory(t, "app.db")
	path := filepath.Join(t.TempDir(), "app.db")
	db := openSQLite(t, path)
	step := func(queries ...string) {
		t.Helper()
		for _, q := range queries {
			mustExec(t, db, q)
		}
		h.commitFile(path)
	}
	step("PRAGMA page_size=4096", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
	step(series(2000) + "INSERT INTO t (v) SELECT printf('row %d %s', value, hex(randomblob(100))) FROM s")
	step("UPDATE t SET v = 'changed' WHERE id % 97 = 0")
	step("DELETE FROM t WHERE id > 300", "VACUUM")                              // shrink
	step(series(200) + "INSERT INTO t (v) SELECT hex(randomblob(3000)) FROM s") // grow
	step("PRAGMA page_size=8192", "VACUUM")                                     // page size up
	step("UPDATE t SET v = 'again' WHERE id % 13 = 0")
	step("PRAGMA page_size=1024", "VACUUM") // page size down
	step("DELETE FROM t WHERE id % 2 = 0", "INSERT INTO t (v) VALUES ('last')")
	return h
}

// series is a WITH clause naming the integers 1..n as s(value).
func series(n int) string {
	return fmt.Sprintf("WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value+1 FROM s WHERE value < %d) ", n)
}

func TestRestoreEveryTXID(t *testing.T) {
	h := sqliteHistory(t)
	ctx := context.Background()
	out := t.TempDir()
	for txid := ltx.TXID(0); txid <= h.txid; txid++ {
		output := filepath.Join(out, fmt.Sprintf("at-%d.db", txid))
		res, err := Restore(ctx, h.rep, "app.db", Options{Output: output, TXID: txid})
		if err != nil {
			t.Fatalf("txid %d: %v", txid, err)
		}
		want := h.states[max(txid, 1)]
		if txid == 0 {
			want = h.state
		}
		got, err := os.ReadFile(output)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("txid %d: restored %d bytes differ from the source's %d", txid, len(got), len(want))
		}
		if res.TXID != max(txid, 1) && !(txid == 0 && res.TXID == h.txid) {
			t.Fatalf("txid %d: result txid %s", txid, res.TXID)
		}
		if res.Bytes != int64(len(want)) || res.Bytes != int64(res.Commit)*int64(res.PageSize) {
			t.Fatalf("txid %d: result %+v for %d bytes", txid, res, len(want))
		}
		integrityCheck(t, output)
	}
}

// A commit that truncates must drop the older versions of the pages it
// removes, even when a later commit grows the database without writing them.
func TestRestoreTruncateThenGrow(t *testing.T) {
	h := truncateThenGrow(t)

	for txid := ltx.TXID(1); txid <= h.txid; txid++ {
		output := filepath.Join(t.TempDir(), "x.db")
		if _, err := Restore(context.Background(), h.rep, "x.db", Options{Output: output, TXID: txid}); err != nil {
			t.Fatalf("txid %d: %v", txid, err)
		}
		got, _ := os.ReadFile(output)
		if !bytes.Equal(got, h.states[txid]) {
			t.Fatalf("txid %d: restored bytes differ", txid)
		}
	}
}

// A database deleted at a TXID restores as an empty file there, and a
// database created again afterwards restores without the old pages.
func TestRestoreDeleted(t *testing.T) {
	h := newHistory(t, "x.db")
	h.commitPages(1024, 3, map[uint32][]byte{1: bytes.Repeat([]byte{1}, 1024), 2: bytes.Repeat([]byte{2}, 1024), 3: bytes.Repeat([]byte{3}, 1024)})
	deleted := h.commitBytes(nil)
	h.commitPages(1024, 2, map[uint32][]byte{2: bytes.Repeat([]byte{9}, 1024)})

	dir := t.TempDir()
	res, err := Restore(context.Background(), h.rep, "x.db", Options{Output: filepath.Join(dir, "gone.db"), TXID: deleted})
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(dir, "gone.db")); res.Commit != 0 || st.Size() != 0 {
		t.Fatalf("deleted database: %+v, %d bytes", res, st.Size())
	}
	if _, err := Restore(context.Background(), h.rep, "x.db", Options{Output: filepath.Join(dir, "again.db")}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "again.db")); !bytes.Equal(got, h.state) {
		t.Fatal("recreated database differs")
	}
}

// The lock page of a database over 1 GiB is never stored; the restored file
// has zeros there and the pages around it in place. Page size 512 puts the
// lock page at 2097153.
func TestRestoreLockPage(t *testing.T) {
	if testing.Short() {
		t.Skip("reads a 1 GiB sparse file")
	}
	const ps = 512
	lock := ltx.LockPgno(ps)
	commit := lock + 2
	h := newHistory(t, "big.db")
	h.commitPages(ps, 1, map[uint32][]byte{1: bytes.Repeat([]byte{1}, ps)})
	// Written by hand: the history helper would hold 1 GiB in memory.
	pages := map[uint32][]byte{1: bytes.Repeat([]byte{2}, ps), lock - 1: bytes.Repeat([]byte{3}, ps), lock + 1: bytes.Repeat([]byte{4}, ps), commit: bytes.Repeat([]byte{5}, ps)}
	expected := filepath.Join(t.TempDir(), "expected.db")
	ef, err := os.Create(expected)
	if err != nil {
		t.Fatal(err)
	}
	for pgno, p := range pages {
		ef.WriteAt(p, int64(pgno-1)*ps)
	}
	ef.Truncate(int64(commit) * ps)
	ef.Seek(0, 0)
	post, err := ltx.ChecksumReader(bufio.NewReaderSize(ef, 1<<20), ps) // independent of the restore's own sums
	ef.Close()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc, _ := ltx.NewEncoder(&buf)
	if err := enc.EncodeHeader(ltx.Header{Version: ltx.Version, PageSize: ps, Commit: commit, MinTXID: 2, MaxTXID: 2, Timestamp: 1, PreApplyChecksum: h.sum}); err != nil {
		t.Fatal(err)
	}
	for _, pgno := range []uint32{1, lock - 1, lock + 1, commit} {
		if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, pages[pgno]); err != nil {
			t.Fatal(err)
		}
	}
	enc.SetPostApplyChecksum(post)
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.rep.WriteLTX("big.db", 0, 2, 2, buf.Bytes(), false); err != nil {
		t.Fatal(err)
	}

	output := filepath.Join(t.TempDir(), "big.db")
	res, err := Restore(context.Background(), h.rep, "big.db", Options{Output: output})
	if err != nil {
		t.Fatal(err)
	}
	if res.Checksum != post || res.Bytes != int64(commit)*ps {
		t.Fatalf("result %+v, want checksum %s", res, post)
	}
	f, err := os.Open(output)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for pgno, want := range map[uint32][]byte{1: pages[1], lock - 1: pages[lock-1], lock: make([]byte, ps), lock + 1: pages[lock+1], commit: pages[commit], 2: make([]byte, ps)} {
		got := make([]byte, ps)
		if _, err := f.ReadAt(got, int64(pgno-1)*ps); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("page %d: %v, %x...", pgno, err, got[:8])
		}
	}
}

func TestRestoreCorruptFile(t *testing.T) {
	for _, tt := range []struct {
		name string
		at   ltx.TXID
		off  int // negative: from the end
	}{
		{"page data", 3, ltx.HeaderSize + 20},
		{"header", 3, 12},
		{"trailer", 3, -1},
		{"older file", 2, ltx.HeaderSize + 20}, // read while restoring TXID 3
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := sqliteHistory(t)
			data, err := os.ReadFile(h.path(tt.at))
			if err != nil {
				t.Fatal(err)
			}
			if tt.off < 0 {
				tt.off += len(data)
			}
			data[tt.off] ^= 0x55
			if err := os.WriteFile(h.path(tt.at), data, 0o644); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			_, err = Restore(context.Background(), h.rep, "app.db", Options{Output: filepath.Join(dir, "x.db"), TXID: 3})
			name := fmt.Sprintf("app.db/0000/%s-%s.ltx: ", tt.at, tt.at)
			if !errors.Is(err, ErrCorrupt) || !strings.HasPrefix(err.Error(), name) {
				t.Fatalf("err = %v", err)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Fatalf("left behind: %v", names)
			}
			// States before the damaged file are intact.
			if _, err := Restore(context.Background(), h.rep, "app.db", Options{Output: filepath.Join(dir, "x.db"), TXID: tt.at - 1}); err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(filepath.Join(dir, "x.db")); !bytes.Equal(got, h.states[tt.at-1]) {
				t.Fatal("restore before the damaged file differs")
			}
			// So is a later state whose newer files hold every page (TXID 8
			// changed the page size, rewriting all pages): it does not read
			// the damaged file, and is verified against its checksum.
			if _, err := Restore(context.Background(), h.rep, "app.db", Options{Output: filepath.Join(dir, "latest.db")}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestRestoreGap(t *testing.T) {
	h := sqliteHistory(t)
	if err := os.Remove(h.path(3)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, err := Restore(context.Background(), h.rep, "app.db", Options{Output: filepath.Join(dir, "x.db")})
	if !errors.Is(err, ErrGap) || !strings.Contains(err.Error(), "missing txids 0000000000000003 through 0000000000000003") {
		t.Fatalf("err = %v", err)
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Fatalf("left behind: %v", names)
	}
	if _, err := Restore(context.Background(), h.rep, "app.db", Options{Output: filepath.Join(dir, "x.db"), TXID: 2}); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreChecksumChain(t *testing.T) {
	t.Run("pre-apply", func(t *testing.T) {
		h := newHistory(t, "x.db")
		h.commitPages(512, 2, map[uint32][]byte{1: bytes.Repeat([]byte{1}, 512), 2: bytes.Repeat([]byte{2}, 512)})
		h.commitPages(512, 2, map[uint32][]byte{1: bytes.Repeat([]byte{3}, 512)})
		h.tamper = func(hdr *ltx.Header, post *ltx.Checksum) { hdr.PreApplyChecksum = ltx.ChecksumFlag | 12345 }
		h.commitPages(512, 2, map[uint32][]byte{1: bytes.Repeat([]byte{4}, 512)})
		dir := t.TempDir()
		_, err := Restore(context.Background(), h.rep, "x.db", Options{Output: filepath.Join(dir, "x.db")})
		if !errors.Is(err, ErrChecksumMismatch) || !strings.HasPrefix(err.Error(), "x.db/0000/0000000000000003-0000000000000003.ltx: pre-apply checksum 8000000000003039 does not match") {
			t.Fatalf("err = %v", err)
		}
		if names := dirNames(t, dir); len(names) != 0 {
			t.Fatalf("left behind: %v", names)
		}
	})
	t.Run("post-apply", func(t *testing.T) {
		h := newHistory(t, "x.db")
		h.commitPages(512, 2, map[uint32][]byte{1: bytes.Repeat([]byte{1}, 512), 2: bytes.Repeat([]byte{2}, 512)})
		h.tamper = func(hdr *ltx.Header, post *ltx.Checksum) { *post ^= 1 }
		h.commitPages(512, 2, map[uint32][]byte{1: bytes.Repeat([]byte{3}, 512)})
		dir := t.TempDir()
		_, err := Restore(context.Background(), h.rep, "x.db", Options{Output: filepath.Join(dir, "x.db")})
		if !errors.Is(err, ErrChecksumMismatch) || !strings.Contains(err.Error(), "0000000000000002.ltx: restored database has checksum") {
			t.Fatalf("err = %v", err)
		}
		if names := dirNames(t, dir); len(names) != 0 {
			t.Fatalf("left behind: %v", names)
		}
	})
}

func TestRestoreOutput(t *testing.T) {
	h := newHistory(t, "x.db")
	h.commitPages(512, 1, map[uint32][]byte{1: bytes.Repeat([]byte{1}, 512)})
	ctx := context.Background()

	t.Run("exists", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "x.db"), []byte("mine"), 0o644)
		_, err := Restore(ctx, h.rep, "x.db", Options{Output: filepath.Join(dir, "x.db")})
		if !errors.Is(err, ErrOutputExists) {
			t.Fatalf("err = %v", err)
		}
		if got, _ := os.ReadFile(filepath.Join(dir, "x.db")); string(got) != "mine" || len(dirNames(t, dir)) != 1 {
			t.Fatal("existing output touched")
		}
	})
	t.Run("wal beside", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "x.db-wal"), []byte("old"), 0o644)
		_, err := Restore(ctx, h.rep, "x.db", Options{Output: filepath.Join(dir, "x.db")})
		if !errors.Is(err, ErrOutputExists) || !strings.Contains(err.Error(), "x.db-wal") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("directory missing", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "nope")
		_, err := Restore(ctx, h.rep, "x.db", Options{Output: filepath.Join(missing, "x.db")})
		if !errors.Is(err, fs.ErrNotExist) || err.Error() != "output directory "+missing+" does not exist" {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("appears meanwhile", func(t *testing.T) {
		dir := t.TempDir()
		tmp, out := filepath.Join(dir, "x.db.tmp-1"), filepath.Join(dir, "x.db")
		os.WriteFile(tmp, []byte("new"), 0o644)
		os.WriteFile(out, []byte("theirs"), 0o644)
		if err := renameNoReplace(tmp, out); !errors.Is(err, ErrOutputExists) {
			t.Fatalf("err = %v", err)
		}
		if got, _ := os.ReadFile(out); string(got) != "theirs" {
			t.Fatal("output replaced")
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		dir := t.TempDir()
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := Restore(cctx, h.rep, "x.db", Options{Output: filepath.Join(dir, "x.db")}); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
		if names := dirNames(t, dir); len(names) != 0 {
			t.Fatalf("left behind: %v", names)
		}
	})
	t.Run("no history", func(t *testing.T) {
		dir := t.TempDir()
		_, err := Restore(ctx, h.rep, "other.db", Options{Output: filepath.Join(dir, "x.db")})
		if !errors.Is(err, ErrNoHistory) || !slices.Equal(dirNames(t, dir), nil) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestZeroPageSums(t *testing.T) {
	for ps := uint32(512); ps <= ltx.MaxPageSize; ps *= 2 {
		z := newZeroPageSums(ps)
		zeros := make([]byte, ps)
		for _, pgno := range []uint32{0, 1, 2, 3, 255, ltx.LockPgno(ps), 1<<31 + 12345, ^uint32(0)} {
			if got, want := z.sum(pgno), ltx.ChecksumPage(pgno, zeros); got != want {
				t.Fatalf("page size %d pgno %d: %s, want %s", ps, pgno, got, want)
			}
		}
	}
}
