package restore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/sqlfs/sqlfs/pager/crc64iso"
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

// A file whose page index is larger than the tail read: the index is read
// in two parts (before the tail, and in it) with the header read alongside,
// and must come out as ltx.Decoder reads it.
func TestReadFileIndexLargeIndex(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	file := snapshotLTX(t, 512, randomDB(r, 512, 20000))
	rep := ship.NewFileReplica(t.TempDir())
	if err := rep.WriteLTX("f.db", 0, 1, 1, file, false); err != nil {
		t.Fatal(err)
	}
	fi := &ltx.FileInfo{Level: 0, MinTXID: 1, MaxTXID: 1, Size: int64(len(file))}
	idx, err := readFileIndex(context.Background(), rep, "f.db", fi)
	if err != nil {
		t.Fatal(err)
	}
	dec := ltx.NewDecoder(bytes.NewReader(file))
	if err := dec.Verify(); err != nil {
		t.Fatal(err)
	}
	want := dec.PageIndex()
	if len(idx.pgnos) != 20000 || len(want) != 20000 {
		t.Fatalf("index of %d pages, ltx.Decoder has %d, want 20000", len(idx.pgnos), len(want))
	}
	for k, pgno := range idx.pgnos {
		if e := want[pgno]; e.Offset != idx.offs[k] || e.Size != int64(idx.sizes[k]) {
			t.Fatalf("page %d: frame %d+%d, ltx.Decoder: %+v", pgno, idx.offs[k], idx.sizes[k], e)
		}
	}
	indexBytes := idx.tailLen - 8 - ltx.TrailerChecksumOffset // end-of-pages marker and index
	if indexBytes <= tailRead {
		t.Fatalf("index of %d bytes fits in the tail read; the test wants a larger one", indexBytes)
	}
	// Header, then everything from the end-of-pages marker on, each once.
	if want := int64(ltx.HeaderSize) + int64(len(file)) - idx.framesEnd; idx.fetched != want {
		t.Fatalf("fetched %d bytes, want %d", idx.fetched, want)
	}
	// What the file checksum needs of the parts read must match the file.
	if got, want := idx.headSum, crc64iso.Checksum(file[:ltx.HeaderSize]); got != want {
		t.Fatalf("header CRC %x, want %x", got, want)
	}
	end := int64(len(file)) - ltx.TrailerSize + ltx.TrailerChecksumOffset
	if got, want := idx.tailSum, crc64iso.Checksum(file[idx.framesEnd:end]); got != want || idx.tailLen != end-idx.framesEnd {
		t.Fatalf("tail CRC %x over %d bytes, want %x over %d", got, idx.tailLen, want, end-idx.framesEnd)
	}
}
