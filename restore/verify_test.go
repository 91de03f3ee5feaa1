package restore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/superfly/ltx"
)

// randomHistory is a database of 64 pages of random bytes (so LZ4 keeps
// them as literals: a changed byte decodes to a changed page, unnoticed by
// the decoder) at TXID 1, a file larger than tailRead and so not verified
// at open; TXID 2 rewrites pages 40..63 (more than maxGap, so no read of
// the database needs their frames in TXID 1), TXID 3 rewrites page 2.
func randomHistory(t *testing.T) *history {
	t.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	page := func() []byte {
		b := make([]byte, 4096)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	h := newHistory(t, "r.db")
	all := map[uint32][]byte{}
	for pgno := uint32(1); pgno <= 64; pgno++ {
		all[pgno] = page()
	}
	h.commitPages(4096, 64, all)
	later := map[uint32][]byte{}
	for pgno := uint32(40); pgno <= 63; pgno++ {
		later[pgno] = page()
	}
	h.commitPages(4096, 64, later)
	h.commitPages(4096, 64, map[uint32][]byte{2: page()})
	return h
}

// damageFrame flips one byte in the middle of the compressed page of pgno
// in the file of txid.
func damageFrame(t *testing.T, h *history, txid ltx.TXID, pgno uint32) {
	t.Helper()
	infos, err := h.rep.LTXFiles(context.Background(), h.db, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := readFileIndex(context.Background(), h.rep, h.db, infos[txid-1])
	if err != nil {
		t.Fatal(err)
	}
	if f.verified {
		t.Fatalf("txid %d is verified at open; the test needs a large file", txid)
	}
	k := 0
	for f.pgnos[k] != pgno {
		k++
	}
	data, err := os.ReadFile(h.path(txid))
	if err != nil {
		t.Fatal(err)
	}
	data[f.offs[k]+int64(f.sizes[k])/2] ^= 0x01
	if err := os.WriteFile(h.path(txid), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// readPage reads page pgno (4096 bytes) of s.
func readPage(s *PageSource, pgno uint32) ([]byte, error) {
	b := make([]byte, 4096)
	_, err := s.ReadAt(context.Background(), b, int64(pgno-1)*4096)
	return b, err
}

// readSequential reads s from the start in 16 KiB reads through one Reader,
// as cp does, and returns the bytes read before the first error.
func readSequential(s *PageSource) ([]byte, error) {
	rd := s.NewReader()
	var out []byte
	buf := make([]byte, 16<<10)
	for off := int64(0); ; {
		n, err := rd.ReadAt(context.Background(), buf, off)
		out = append(out, buf[:n]...)
		off += int64(n)
		if err == io.EOF {
			return out, nil
		} else if err != nil {
			return out, err
		}
	}
}

func TestVerifyIntact(t *testing.T) {
	h := randomHistory(t)
	s := openSource(t, h, 3, PageSourceOptions{})
	got, err := readSequential(s)
	if err != nil || !bytes.Equal(got, h.states[3]) {
		t.Fatalf("read: %v (same bytes: %v)", err, bytes.Equal(got, h.states[3]))
	}
	for _, f := range s.files {
		if !f.verified && f.refs > 0 && !f.check.isOK() {
			t.Errorf("%s not verified after the whole database was read", f.path)
		}
	}
	if !s.done.ok {
		t.Error("database not verified after it was read whole")
	}
	// The pages TXID 2 replaced were fetched only to verify TXID 1.
	if st := s.Stats(); st.PageBytes < int64(len(h.states[3])) {
		t.Errorf("fetched %d page bytes for a %d-byte database", st.PageBytes, len(h.states[3]))
	}
}

// A changed byte in a page the database shows: a point query elsewhere in
// the file works, reading it all fails naming the file, and from then on
// every read of that file's pages fails.
func TestVerifyDamagedPage(t *testing.T) {
	h := randomHistory(t)
	damageFrame(t, h, 1, 20)
	s := openSource(t, h, 3, PageSourceOptions{})
	if got, err := readPage(s, 30); err != nil || !bytes.Equal(got, h.states[3][29*4096:30*4096]) {
		t.Fatalf("point read of an intact page: %v", err)
	}
	_, err := readSequential(s)
	name := "r.db/0000/0000000000000001-0000000000000001.ltx: "
	if !errors.Is(err, ErrChecksumMismatch) || !strings.HasPrefix(err.Error(), name) {
		t.Fatalf("read of the whole database: err = %v", err)
	}
	if _, err := readPage(s, 30); !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("read of a page of the failed file: err = %v", err)
	}
}

// A changed byte in a page no read needs (a later file replaced it): every
// read returns the right bytes, but the read that would complete the
// database fails, naming the file, and so does every read after it.
func TestVerifyDamagedReplacedPage(t *testing.T) {
	h := randomHistory(t)
	damageFrame(t, h, 1, 50)
	s := openSource(t, h, 3, PageSourceOptions{})
	got, err := readSequential(s)
	name := "r.db/0000/0000000000000001-0000000000000001.ltx: "
	if !errors.Is(err, ErrChecksumMismatch) || !strings.HasPrefix(err.Error(), name) {
		t.Fatalf("read of the whole database: err = %v", err)
	}
	if len(got) >= len(h.states[3]) || !bytes.Equal(got, h.states[3][:len(got)]) {
		t.Fatalf("read %d bytes before the error, the same as the database: %v", len(got), bytes.Equal(got, h.states[3][:len(got)]))
	}
	if _, err := readPage(s, 64); !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("read after the failure: err = %v", err)
	}
}

// Files intact but a database checksum that does not match (here the
// writer recorded a wrong one): point reads work, reading it all fails.
func TestVerifyDatabaseChecksum(t *testing.T) {
	h := randomHistory(t)
	h.tamper = func(hdr *ltx.Header, post *ltx.Checksum) { *post = ltx.ChecksumFlag | 777 }
	h.commitPages(4096, 64, map[uint32][]byte{3: bytes.Repeat([]byte{9}, 4096)})
	s := openSource(t, h, 4, PageSourceOptions{})
	if _, err := readPage(s, 3); err != nil {
		t.Fatalf("point read: %v", err)
	}
	_, err := readSequential(s)
	if !errors.Is(err, ErrChecksumMismatch) || !strings.Contains(err.Error(), "post-apply checksum") {
		t.Fatalf("read of the whole database: err = %v", err)
	}
	if _, err := readPage(s, 3); !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("read after the failure: err = %v", err)
	}
}

// A file that failed leaves the disk cache, so the next source fetches it
// again rather than trusting the cached bytes.
func TestVerifyDropsCachedFile(t *testing.T) {
	h := randomHistory(t)
	damageFrame(t, h, 1, 20)
	cache := t.TempDir()
	opt := PageSourceOptions{CacheDir: cache, ReplicaID: "file://" + h.rep.Root}
	s := openSource(t, h, 3, opt)
	if _, err := readSequential(s); !errors.Is(err, ErrChecksumMismatch) {
		t.Fatalf("err = %v", err)
	}
	key := s.files[len(s.files)-1].cacheKey
	if _, err := os.Stat(cache + "/" + key + ".data"); !os.IsNotExist(err) {
		t.Fatalf("the failed file is still cached: %v", err)
	}
}

// A file whose frames every read needed is verified by the reads alone:
// completing the database fetches nothing more.
func TestVerifyNoRefetch(t *testing.T) {
	h := randomHistory(t)
	s := openSource(t, h, 1, PageSourceOptions{})
	if _, err := readSequential(s); err != nil {
		t.Fatal(err)
	}
	if got, size := s.Stats().PageBytes, s.files[0].info.Size; got > size {
		t.Fatalf("fetched %d page bytes of a %d-byte file", got, size)
	}
}
