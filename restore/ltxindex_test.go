package restore

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/sqlfs/sqlfs/pager/crc64iso"
	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// FuzzReadFileIndex reads the index of arbitrary bytes stored as an LTX
// file (named after the TXIDs its header holds, if it has one). Files this
// small are read whole and verified at open: what readFileIndex accepts,
// ltx.Decoder must accept too, with the same page index.
func FuzzReadFileIndex(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 5))
	var seeds [][]byte
	for _, n := range []int{1, 3, 40} {
		seeds = append(seeds, snapshotLTX(f, 512, randomDB(r, 512, n)))
	}
	// Commits after the first: some pages of a database.
	for _, c := range []struct {
		txid   ltx.TXID
		ps     uint32
		commit uint32
		pgnos  []uint32
	}{
		{2, 512, 4, []uint32{1, 4}}, {7, 512, 9, []uint32{2, 3, 9}}, {3, 1024, 2, []uint32{2}},
	} {
		seeds = append(seeds, commitLTX(f, c.txid, c.ps, c.commit, c.pgnos, randomDB(r, int(c.ps), len(c.pgnos))))
	}
	for i, seed := range seeds {
		// Valid files must be accepted, or the check below checks nothing.
		if _, err := openFileIndex(seed); err != nil {
			f.Fatalf("seed %d: %v", i, err)
		}
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, file []byte) {
		checkFileIndex(t, file)
	})
}

// commitLTX encodes a commit (not a snapshot) of TXID txid that writes
// pages (of ps bytes, in pgnos order) of a database of commit pages.
func commitLTX(t testing.TB, txid ltx.TXID, ps, commit uint32, pgnos []uint32, pages []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc, err := ltx.NewEncoder(&buf)
	if err != nil {
		t.Fatal(err)
	}
	hdr := ltx.Header{Version: ltx.Version, PageSize: ps, Commit: commit, MinTXID: txid, MaxTXID: txid, Timestamp: 1,
		PreApplyChecksum: ltx.ChecksumFlag | ltx.Checksum(txid)}
	if err := enc.EncodeHeader(hdr); err != nil {
		t.Fatal(err)
	}
	for i, pgno := range pgnos {
		if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, pages[i*int(ps):(i+1)*int(ps)]); err != nil {
			t.Fatal(err)
		}
	}
	enc.SetPostApplyChecksum(ltx.ChecksumFlag | ltx.Checksum(txid+1))
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checkFileIndex is FuzzReadFileIndex's check of one file.
func checkFileIndex(t *testing.T, file []byte) {
	if len(file) > tailRead {
		return
	}
	idx, err := openFileIndex(file)
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
}

// openFileIndex reads the index of file as stored under the TXIDs its
// header names (1-1 if it has no header).
func openFileIndex(file []byte) (*fileIndex, error) {
	fi := &ltx.FileInfo{Level: 0, MinTXID: 1, MaxTXID: 1, Size: int64(len(file))}
	var hdr ltx.Header
	if hdr.UnmarshalBinary(file) == nil && hdr.MinTXID > 0 && hdr.MinTXID <= hdr.MaxTXID {
		fi.MinTXID, fi.MaxTXID = hdr.MinTXID, hdr.MaxTXID
	}
	rep := memReplica{ship.LTXPath("f.db", 0, fi.MinTXID, fi.MaxTXID): file}
	return readFileIndex(context.Background(), rep, "f.db", fi)
}

// memReplica holds LTX files in memory, by path; it only reads.
type memReplica map[string][]byte

func (m memReplica) Databases(ctx context.Context) ([]string, error) { return nil, nil }

func (m memReplica) LTXFiles(ctx context.Context, db string, level int) ([]*ltx.FileInfo, error) {
	return nil, nil
}

func (m memReplica) OpenLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID) (io.ReadCloser, error) {
	return m.ReadLTXRange(ctx, db, level, minTXID, maxTXID, 0, -1)
}

func (m memReplica) ReadLTXRange(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, off, n int64) (io.ReadCloser, error) {
	data, ok := m[ship.LTXPath(db, level, minTXID, maxTXID)]
	if !ok {
		return nil, ship.ErrNotFound
	}
	data = data[min(off, int64(len(data))):]
	if n >= 0 && n < int64(len(data)) {
		data = data[:n]
	}
	return io.NopCloser(bytes.NewReader(data)), nil
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
