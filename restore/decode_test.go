package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// snapshotLTX encodes a snapshot of db (pages of ps bytes) as TXID 1 and
// returns the file.
func snapshotLTX(t testing.TB, ps uint32, db []byte) []byte {
	t.Helper()
	commit := uint32(len(db) / int(ps))
	var buf bytes.Buffer
	enc, err := ltx.NewEncoder(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := enc.EncodeHeader(ltx.Header{Version: ltx.Version, PageSize: ps, Commit: commit, MinTXID: 1, MaxTXID: 1, Timestamp: 1}); err != nil {
		t.Fatal(err)
	}
	post := ltx.ChecksumFlag
	for pgno := uint32(1); pgno <= commit; pgno++ {
		if pgno == ltx.LockPgno(ps) {
			continue
		}
		page := db[int(pgno-1)*int(ps) : int(pgno)*int(ps)]
		post = ltx.ChecksumFlag | (post ^ ltx.ChecksumPage(pgno, page))
		if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, page); err != nil {
			t.Fatal(err)
		}
	}
	enc.SetPostApplyChecksum(post)
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// randomDB returns n pages of ps bytes: random, zeros, and half-random
// pages, so LZ4 blocks of every size occur.
func randomDB(r *rand.Rand, ps, n int) []byte {
	db := make([]byte, ps*n)
	for i := range n {
		page := db[i*ps : (i+1)*ps]
		switch i % 5 {
		case 0, 1, 2:
			for j := range page {
				page[j] = byte(r.Uint32())
			}
		case 3:
			for j := range page[:ps/2] {
				page[j] = byte(r.Uint32())
			}
		}
	}
	return db
}

// TestRestoreLargeSnapshot restores a snapshot of many chunks and batches
// and compares the result with ltx.Decoder's sequential decoding.
func TestRestoreLargeSnapshot(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	const ps = 4096
	db := randomDB(r, ps, 5000) // ~20 MB: many chunks, twenty batches
	file := snapshotLTX(t, ps, db)
	rep := ship.NewFileReplica(t.TempDir())
	if err := rep.WriteLTX("big.db", 0, 1, 1, file, false); err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := ltx.NewDecoder(bytes.NewReader(file)).DecodeDatabaseTo(&want); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want.Bytes(), db) {
		t.Fatal("ltx.Decoder does not return the database")
	}
	for _, parallelism := range []int{1, 3, 8} {
		out := filepath.Join(t.TempDir(), "big.db")
		res, err := Restore(context.Background(), rep, "big.db", Options{Output: out, Parallelism: parallelism})
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("parallelism %d: restored database differs from ltx.Decoder's", parallelism)
		}
		if sum, _ := ltx.ChecksumReader(bytes.NewReader(got), ps); res.Checksum != sum {
			t.Fatalf("checksum %s, want %s", res.Checksum, sum)
		}
	}
}

// TestRestoreLargeSnapshotCorrupt flips one byte at places all over a large
// snapshot: each restore must fail naming the file, and leave nothing.
func TestRestoreLargeSnapshotCorrupt(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	const ps = 4096
	db := randomDB(r, ps, 3000)
	file := snapshotLTX(t, ps, db)
	offsets := map[string]int{
		"header":           20,
		"first page":       ltx.HeaderSize + 50,
		"middle":           len(file) / 2,
		"chunk boundary":   chunkSize - 1,
		"late page":        len(file) * 9 / 10,
		"page index":       len(file) - ltx.TrailerSize - 30,
		"trailer checksum": len(file) - 1,
		"post-apply":       len(file) - ltx.TrailerSize + 3,
	}
	for i := range 12 {
		offsets["random "+string(rune('a'+i))] = ltx.HeaderSize + r.IntN(len(file)-ltx.HeaderSize)
	}
	for name, off := range offsets {
		t.Run(name, func(t *testing.T) {
			bad := bytes.Clone(file)
			bad[off] ^= 1 << (off % 8)
			rep := ship.NewFileReplica(t.TempDir())
			if err := rep.WriteLTX("big.db", 0, 1, 1, bad, false); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			_, err := Restore(context.Background(), rep, "big.db", Options{Output: filepath.Join(dir, "big.db")})
			if !(errors.Is(err, ErrCorrupt) || errors.Is(err, ErrChecksumMismatch)) ||
				!strings.HasPrefix(err.Error(), "big.db/0000/0000000000000001-0000000000000001.ltx: ") {
				t.Fatalf("byte %d of %d: err = %v", off, len(file), err)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Fatalf("left behind: %v", names)
			}
		})
	}
}

// FuzzRestoreSnapshot restores arbitrary bytes as a snapshot file. What
// Restore accepts, ltx.Decoder must accept, with the same database.
func FuzzRestoreSnapshot(f *testing.F) {
	r := rand.New(rand.NewPCG(3, 3))
	for _, n := range []int{0, 1, 3, 40} {
		f.Add(snapshotLTX(f, 512, randomDB(r, 512, n)))
	}
	f.Fuzz(func(t *testing.T, file []byte) {
		rep := ship.NewFileReplica(t.TempDir())
		if err := rep.WriteLTX("f.db", 0, 1, 1, file, false); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "f.db")
		if _, err := Restore(context.Background(), rep, "f.db", Options{Output: out}); err != nil {
			return
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var want bytes.Buffer
		if err := ltx.NewDecoder(bytes.NewReader(file)).Verify(); err != nil {
			t.Fatalf("restore accepted a file ltx.Decoder rejects: %v", err)
		}
		if err := ltx.NewDecoder(bytes.NewReader(file)).DecodeDatabaseTo(&want); err == nil && !bytes.Equal(got, want.Bytes()) {
			t.Fatal("restored database differs from ltx.Decoder's")
		}
	})
}

// BenchmarkRestoreSnapshot restores one snapshot of SQLFS_BENCH_MB MiB
// (default 64) of incompressible pages from a file replica.
func BenchmarkRestoreSnapshot(b *testing.B) {
	mb := 64
	if s := os.Getenv("SQLFS_BENCH_MB"); s != "" {
		if _, err := fmt.Sscan(s, &mb); err != nil {
			b.Fatal(err)
		}
	}
	r := rand.New(rand.NewPCG(4, 4))
	const ps = 4096
	db := make([]byte, mb<<20)
	for i := range db {
		db[i] = byte(r.Uint32())
	}
	rep := ship.NewFileReplica(b.TempDir())
	if err := rep.WriteLTX("b.db", 0, 1, 1, snapshotLTX(b, ps, db), false); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	b.SetBytes(int64(len(db)))
	for b.Loop() {
		out := filepath.Join(dir, "b.db")
		if _, err := Restore(context.Background(), rep, "b.db", Options{Output: out}); err != nil {
			b.Fatal(err)
		}
		os.Remove(out)
	}
}

// reuseHistory is a history of 4 KiB pages whose files range from one page
// to several download chunks, so batches and chunks end at every kind of
// place and full-size chunk buffers are reused many times. Page 1 is only
// in the snapshot, so a restore reads every file.
func reuseHistory(t *testing.T) *history {
	r := rand.New(rand.NewPCG(6, 6))
	const ps, n = 4096, 2600 // the snapshot spans several chunks
	h := newHistory(t, "reuse.db")
	db := randomDB(r, ps, n)
	pages := map[uint32][]byte{}
	for pgno := uint32(1); pgno <= n; pgno++ {
		pages[pgno] = db[int(pgno-1)*ps : int(pgno)*ps]
	}
	h.commitPages(ps, n, pages)
	for _, k := range []int{1, 1500, 3, 255, 256, 257, 1023, 1024, 1025, 17, 2000, 511, 700, 2599, 2} {
		changed := map[uint32][]byte{}
		for _, i := range r.Perm(n - 1)[:k] {
			page := randomDB(r, ps, 5)[(i%5)*ps : (i%5+1)*ps] // random, zeros or half random
			changed[uint32(i+2)] = page
		}
		h.commitPages(ps, n, changed)
		clear(h.states) // keep only the latest state: h.state
	}
	return h
}

// TestRestoreReusedBuffers restores a history of files of many sizes with
// few and many reads in flight: the bytes must be exact, so no download
// buffer was reused while a batch still pointed into it.
func TestRestoreReusedBuffers(t *testing.T) {
	h := reuseHistory(t)
	for _, parallelism := range []int{1, 2, 16} {
		out := filepath.Join(t.TempDir(), "reuse.db")
		res, err := Restore(context.Background(), h.rep, "reuse.db", Options{Output: out, Parallelism: parallelism})
		if err != nil {
			t.Fatalf("parallelism %d: %v", parallelism, err)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, h.state) {
			t.Fatalf("parallelism %d: restored database differs", parallelism)
		}
		if res.TXID != h.txid {
			t.Fatalf("parallelism %d: txid %s, want %s", parallelism, res.TXID, h.txid)
		}
	}
}

// TestRestoreReusedBuffersCorrupt damages one file of that history, in a
// page late in a large file (a reused buffer) and in a small one: the
// restore must fail naming that file, whatever the parallelism.
func TestRestoreReusedBuffersCorrupt(t *testing.T) {
	h := reuseHistory(t)
	for _, tt := range []struct {
		txid ltx.TXID
		frac float64 // where in the file, as a fraction of its size
	}{{3, 0.9}, {12, 0.7}, {4, 0.5}, {1, 0.95}} {
		path := h.path(tt.txid)
		orig, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		bad := bytes.Clone(orig)
		bad[ltx.HeaderSize+int(float64(len(bad)-ltx.HeaderSize-ltx.TrailerSize)*tt.frac)] ^= 0x20
		if err := os.WriteFile(path, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, parallelism := range []int{1, 16} {
			dir := t.TempDir()
			_, err := Restore(context.Background(), h.rep, "reuse.db", Options{Output: filepath.Join(dir, "reuse.db"), Parallelism: parallelism})
			name := fmt.Sprintf("reuse.db/0000/%s-%s.ltx: ", tt.txid, tt.txid)
			if !(errors.Is(err, ErrCorrupt) || errors.Is(err, ErrChecksumMismatch)) || !strings.HasPrefix(err.Error(), name) {
				t.Fatalf("txid %s, parallelism %d: err = %v", tt.txid, parallelism, err)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Fatalf("left behind: %v", names)
			}
		}
		if err := os.WriteFile(path, orig, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
