package restore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// FuzzReadFileIndex reads the index of arbitrary bytes stored as an LTX
// file. Files this small are read whole at open, so what readFileIndex
// accepts ltx.Decoder must accept too, with the same page index.
func FuzzReadFileIndex(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 5))
	for _, n := range []int{1, 3, 40} {
		f.Add(snapshotLTX(f, 512, randomDB(r, 512, n)))
	}
	f.Fuzz(func(t *testing.T, file []byte) {
		if len(file) > tailRead {
			return
		}
		rep := ship.NewFileReplica(t.TempDir())
		if err := rep.WriteLTX("f.db", 0, 1, 1, file, false); err != nil {
			t.Fatal(err)
		}
		fi := &ltx.FileInfo{Level: 0, MinTXID: 1, MaxTXID: 1, Size: int64(len(file))}
		idx, err := readFileIndex(context.Background(), rep, "f.db", fi)
		if err != nil {
			return
		}
		if !idx.verified {
			t.Fatal("a file of at most tailRead bytes was not verified at open")
		}
		dec := ltx.NewDecoder(bytes.NewReader(file))
		if err := dec.Verify(); err != nil {
			t.Fatalf("readFileIndex accepted a file ltx.Decoder rejects: %v", err)
		}
		want := dec.PageIndex()
		if len(idx.pgnos) != len(want) || len(idx.offs) != len(want) || len(idx.sizes) != len(want) {
			t.Fatalf("index of %d pages, ltx.Decoder has %d", len(idx.pgnos), len(want))
		}
		for k, pgno := range idx.pgnos {
			e, ok := want[pgno]
			if !ok || e.Offset != idx.offs[k] || e.Size != int64(idx.sizes[k]) {
				t.Fatalf("page %d: frame %d+%d, ltx.Decoder: %+v (%v)", pgno, idx.offs[k], idx.sizes[k], e, ok)
			}
		}
	})
}
