package ship

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/superfly/ltx"
)

// ltxChain makes LTX files as sqlfs's capture does: real checksums that
// chain, and a commit that grows the database carries every page from the
// old end to the new end.
type ltxChain struct {
	t        *testing.T
	pageSize uint32
	txid     ltx.TXID
	state    []byte
	sum      ltx.Checksum
}

// commit sets the database to size pages, writes pages and returns the file.
func (c *ltxChain) commit(size uint32, pages map[uint32][]byte) []byte {
	c.t.Helper()
	ps := int(c.pageSize)
	c.txid++
	old := uint32(len(c.state) / ps)
	next := make([]byte, int(size)*ps)
	copy(next, c.state)
	write := map[uint32]bool{}
	for p, b := range pages {
		copy(next[int(p-1)*ps:], b)
		write[p] = true
	}
	for p := old + 1; p <= size; p++ {
		write[p] = true
	}
	lock := ltx.LockPgno(c.pageSize)
	post := ltx.ChecksumFlag
	for p := uint32(1); p <= size; p++ {
		if p != lock {
			post = ltx.ChecksumFlag | (post ^ ltx.ChecksumPage(p, next[int(p-1)*ps:int(p)*ps]))
		}
	}
	var buf bytes.Buffer
	enc, _ := ltx.NewEncoder(&buf)
	if err := enc.EncodeHeader(ltx.Header{Version: ltx.Version, PageSize: c.pageSize, Commit: size,
		MinTXID: c.txid, MaxTXID: c.txid, PreApplyChecksum: c.sum,
		Timestamp: time.Date(2024, 1, 1, 0, 0, int(c.txid), 0, time.UTC).UnixMilli()}); err != nil {
		c.t.Fatal(err)
	}
	for p := uint32(1); p <= size; p++ {
		if write[p] && p != lock {
			if err := enc.EncodePage(ltx.PageHeader{Pgno: p}, next[int(p-1)*ps:int(p)*ps]); err != nil {
				c.t.Fatal(err)
			}
		}
	}
	enc.SetPostApplyChecksum(post)
	if err := enc.Close(); err != nil {
		c.t.Fatal(err)
	}
	c.state, c.sum = next, post
	return buf.Bytes()
}

// randomPage is a page of size bytes, half random and half zeros, as a
// table page that is filling up looks.
func randomPage(r *rand.Rand, size int) []byte {
	p := make([]byte, size)
	for i := range size / 2 {
		p[i] = byte(r.Uint32())
	}
	return p
}

// TestMergeFramesMatchesCompactor: merging the compressed frames gives,
// byte for byte, the file decoding and re-encoding with ltx.Compactor gives
// — from a snapshot, in the middle of a history, and across a shrink that
// later commits grow back from.
func TestMergeFramesMatchesCompactor(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	c := &ltxChain{t: t, pageSize: 512}
	var files [][]byte
	files = append(files, c.commit(4, nil))
	for i := 0; i < 60; i++ {
		size := uint32(len(c.state) / 512)
		pages := map[uint32][]byte{1: randomPage(r, 512)}
		switch {
		case i == 20:
			size = 3 // shrink; the next commit grows back, carrying the pages
		case i%7 == 0:
			size += uint32(1 + r.IntN(3))
		}
		for range r.IntN(4) {
			pages[1+uint32(r.IntN(int(size)))] = randomPage(r, 512)
		}
		files = append(files, c.commit(size, pages))
	}
	for _, w := range [][2]int{{0, 1}, {0, 61}, {1, 2}, {5, 40}, {21, 61}, {60, 61}} {
		in := files[w[0]:w[1]]
		want, _, err := compactLTX(context.Background(), in)
		if err != nil {
			t.Fatalf("compactLTX %v: %v", w, err)
		}
		got, err := mergeFrames(context.Background(), in, nil)
		if err != nil {
			t.Fatalf("mergeFrames %v: %v", w, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("mergeFrames %v: %d bytes differ from the Compactor's %d", w, len(got), len(want))
		}
	}

}

// TestMergeFramesRefusesDamage: a merge fails on any damaged byte of any
// input, on a broken chain and on a gap, and reports the older frame
// format as unsupported (mergeLocal then uses the Compactor).
func TestMergeFramesRefusesDamage(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	c := &ltxChain{t: t, pageSize: 512}
	a := c.commit(3, nil)
	b := c.commit(3, map[uint32][]byte{2: randomPage(r, 512)})
	d := c.commit(4, map[uint32][]byte{1: randomPage(r, 512)})
	ctx := context.Background()
	good, err := mergeFrames(ctx, [][]byte{a, b, d}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range [][]byte{b, d} {
		for i := range in {
			bad := bytes.Clone(in)
			bad[i] ^= 0x10
			inputs := [][]byte{a, b, d}
			if bytes.Equal(in, b) {
				inputs[1] = bad
			} else {
				inputs[2] = bad
			}
			got, err := mergeFrames(ctx, inputs, nil)
			_, _, cerr := compactLTX(ctx, inputs)
			switch {
			case err == nil && cerr != nil:
				t.Fatalf("byte %d of %d flipped: merged, but the Compactor refuses it: %v", i, len(in), cerr)
			case err == nil && !bytes.Equal(pagesOf(t, got), pagesOf(t, good)):
				// A flip inside an LZ4 match that copies the same bytes
				// anyway changes nothing the checksum covers.
				t.Fatalf("byte %d of %d flipped: merged into different pages", i, len(in))
			}
		}
		if _, err := mergeFrames(ctx, [][]byte{a, b, in[:len(in)-1]}, nil); err == nil && bytes.Equal(in, d) {
			t.Fatal("truncated input merged without an error")
		}
	}
	if _, err := mergeFrames(ctx, [][]byte{a, d}, nil); err == nil {
		t.Fatal("a gap (txid 2 missing) merged without an error")
	}
	other := &ltxChain{t: t, pageSize: 512, txid: 1, sum: ltx.ChecksumFlag | 12345}
	if _, err := mergeFrames(ctx, [][]byte{a, other.commit(3, nil)}, nil); err == nil {
		t.Fatal("a broken checksum chain merged without an error")
	}
	old := bytes.Clone(b)
	old[ltx.HeaderSize+5] = 0 // the first page's flags: no size prefix, the LZ4-frame format
	if _, err := mergeFrames(ctx, [][]byte{a, old}, nil); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("older frame format: %v, want errors.ErrUnsupported", err)
	}
}

// TestMergeSealedInputs: a merge of commits read from the capture log
// (sealed by the log records' CRC-64, so pages a later commit overwrites
// are not decoded) is byte for byte the merge of the same files verified
// whole, from the first commit (a snapshot, verified whole anyway) and
// from the middle; a kept page that does not decompress to a whole page is
// still refused.
func TestMergeSealedInputs(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	c := &ltxChain{t: t, pageSize: 512}
	s := unstartedStore(t)
	var files [][]byte
	for i := 0; i < 40; i++ {
		size := uint32(4 + i/10)
		pages := map[uint32][]byte{size: randomPage(r, 512)}
		if i%3 == 0 {
			pages[1] = randomPage(r, 512)
		}
		data := c.commit(size, pages)
		files = append(files, data)
		if err := s.Append("app.db", c.txid, c.txid, func(w io.Writer) error { _, err := w.Write(data); return err }, false); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	scratch := new([]byte) // one read buffer for every merge, as the uploader keeps one
	var got, want [][]byte
	windows := [][2]ltx.TXID{{1, 40}, {2, 40}, {17, 33}, {39, 40}}
	for _, w := range windows {
		full, err := mergeFrames(ctx, files[w[0]-1:w[1]], nil)
		if err != nil {
			t.Fatal(err)
		}
		merged, hi, err := mergeLocal(ctx, s, "app.db", w[0], w[1], scratch)
		if err != nil || hi != w[1] {
			t.Fatalf("mergeLocal %v: up to %s, %v", w, hi, err)
		}
		got, want = append(got, merged), append(want, full)
	}
	for i, w := range windows { // after all of them: no merged file shares the read buffer
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("mergeLocal %v: %d bytes differ from the fully verified merge's %d", w, len(got[i]), len(want[i]))
		}
	}
	// The last commit's first page (page 1, kept: the newest version) with
	// a damaged LZ4 block (no literals, then a match reaching back before
	// the page): sealed or not, the merge refuses it.
	last := bytes.Clone(files[39])
	if pgno := binary.BigEndian.Uint32(last[ltx.HeaderSize:]); pgno != 1 {
		t.Fatalf("txid 40's first page is %d, want 1", pgno)
	}
	copy(last[ltx.HeaderSize+framePrefixSize:], []byte{0x00, 0xff, 0xff})
	in := append(slices.Clone(files[30:39]), last)
	sealed := make([]bool, len(in))
	for i := range sealed {
		sealed[i] = true
	}
	if _, err := mergeFrames(ctx, in, sealed); err == nil {
		t.Fatal("merged a sealed input whose kept page does not decompress")
	}
}

// pagesOf decodes an LTX file into its page numbers and pages.
func pagesOf(t *testing.T, data []byte) []byte {
	t.Helper()
	var out []byte
	if _, err := decodeAll(data, func(_ ltx.Header, pgno uint32, page []byte) {
		out = binary.BigEndian.AppendUint32(out, pgno)
		out = append(out, page...)
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// BenchmarkMerge compares merging 200 one-page commits of 4 KiB pages
// through the Compactor, from the frames, and from the frames of inputs
// sealed by capture log records.
func BenchmarkMerge(b *testing.B) {
	r := rand.New(rand.NewPCG(5, 6))
	c := &ltxChain{t: &testing.T{}, pageSize: 4096}
	var files [][]byte
	files = append(files, c.commit(10, nil))
	for i := 0; i < 200; i++ {
		files = append(files, c.commit(10+uint32(i/20), map[uint32][]byte{10 + uint32(i/20): randomPage(r, 4096)}))
	}
	in := files[1:]
	b.Run("compactor", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := compactLTX(context.Background(), in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("frames", func(b *testing.B) {
		for b.Loop() {
			if _, err := mergeFrames(context.Background(), in, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	sealed := make([]bool, len(in))
	for i := range sealed {
		sealed[i] = true
	}
	b.Run("sealed", func(b *testing.B) {
		for b.Loop() {
			if _, err := mergeFrames(context.Background(), in, sealed); err != nil {
				b.Fatal(err)
			}
		}
	})
}
