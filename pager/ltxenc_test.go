package pager

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/superfly/ltx"
)

// TestLTXWriterMatchesEncoder checks that ltxWriter writes exactly the bytes
// ltx.Encoder writes, and that ltx.Decoder accepts them.
func TestLTXWriterMatchesEncoder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var lw ltxWriter // reused on purpose: state must not leak between files
	for _, ps := range []uint32{512, 4096, 65536} {
		for _, n := range []int{0, 1, 3, 40} {
			commit := uint32(n*3 + 5)
			hdr := ltx.Header{Version: ltx.Version, PageSize: ps, Commit: commit, MinTXID: 7, MaxTXID: 7,
				Timestamp: 1700000000000, PreApplyChecksum: ltx.ChecksumFlag | 42, WALOffset: 32, WALSize: 100, WALSalt1: 1, WALSalt2: 2}
			pages := map[uint32][]byte{}
			var order []uint32
			for p := uint32(1); len(order) < n; p += uint32(1 + rng.IntN(3)) {
				data := make([]byte, ps)
				if rng.IntN(2) == 0 {
					for i := range data {
						data[i] = byte(rng.Uint32())
					}
				} else {
					copy(data, bytes.Repeat([]byte("sqlfs"), int(ps)))
				}
				pages[p] = data
				order = append(order, p)
			}
			post := ltx.ChecksumFlag | ltx.Checksum(rng.Uint64())

			var want bytes.Buffer
			enc, _ := ltx.NewEncoder(&want)
			if err := enc.EncodeHeader(hdr); err != nil {
				t.Fatal(err)
			}
			for _, p := range order {
				if err := enc.EncodePage(ltx.PageHeader{Pgno: p}, pages[p]); err != nil {
					t.Fatal(err)
				}
			}
			enc.SetPostApplyChecksum(post)
			if err := enc.Close(); err != nil {
				t.Fatal(err)
			}

			var got bytes.Buffer
			if err := lw.begin(&got, hdr); err != nil {
				t.Fatal(err)
			}
			for _, p := range order {
				if err := lw.page(p, pages[p]); err != nil {
					t.Fatal(err)
				}
			}
			if err := lw.finish(post); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Fatalf("page size %d, %d pages: ltxWriter output differs from ltx.Encoder (%d vs %d bytes)", ps, n, got.Len(), want.Len())
			}
			if err := ltx.NewDecoder(bytes.NewReader(got.Bytes())).Verify(); err != nil {
				t.Fatalf("decoder rejects output: %v", err)
			}
		}
	}
}

func TestLTXWriterRejectsOutOfOrder(t *testing.T) {
	var lw ltxWriter
	hdr := ltx.Header{Version: ltx.Version, PageSize: 512, Commit: 10, MinTXID: 2, MaxTXID: 2, PreApplyChecksum: ltx.ChecksumFlag | 1}
	if err := lw.begin(&bytes.Buffer{}, hdr); err != nil {
		t.Fatal(err)
	}
	if err := lw.page(3, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []uint32{3, 2, 11, 0} {
		if err := lw.page(p, make([]byte, 512)); err == nil {
			t.Fatalf("page %d after 3 accepted", p)
		}
	}
	if err := lw.page(4, make([]byte, 100)); err == nil {
		t.Fatal("short page accepted")
	}
}
