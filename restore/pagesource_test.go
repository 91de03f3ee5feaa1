package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superfly/ltx"
)

// readAll reads a whole page source in chunks of n bytes, which need not
// line up with pages.
func readAll(t *testing.T, src interface {
	ReadAt(context.Context, []byte, int64) (int, error)
}, size int64, n int) []byte {
	t.Helper()
	out := make([]byte, 0, size)
	buf := make([]byte, n)
	for off := int64(0); ; {
		m, err := src.ReadAt(context.Background(), buf, off)
		out = append(out, buf[:m]...)
		off += int64(m)
		if err == io.EOF {
			return out
		} else if err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
}

func openSource(t *testing.T, h *history, txid ltx.TXID, opt PageSourceOptions) *PageSource {
	t.Helper()
	s, err := OpenPageSource(context.Background(), h.rep, h.db, txid, opt)
	if err != nil {
		t.Fatalf("open at txid %d: %v", txid, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Every TXID of a history with grows, shrinks and page-size changes reads
// back byte for byte, whatever the read size, with and without readahead.
func TestPageSourceEveryTXID(t *testing.T) {
	h := sqliteHistory(t)
	for txid := ltx.TXID(1); txid <= h.txid; txid++ {
		s := openSource(t, h, txid, PageSourceOptions{})
		want := h.states[txid]
		if s.Size() != int64(len(want)) || s.TXID() != txid {
			t.Fatalf("txid %d: size %d txid %s, want %d bytes", txid, s.Size(), s.TXID(), len(want))
		}
		if !s.Time().Equal(h.start.Add(time.Duration(txid) * time.Second)) {
			t.Fatalf("txid %d: time %v", txid, s.Time())
		}
		for _, n := range []int{1000, 4096, 128 << 10} {
			if got := readAll(t, s, s.Size(), n); !bytes.Equal(got, want) {
				t.Fatalf("txid %d, reads of %d bytes: content differs", txid, n)
			}
		}
		if got := readAll(t, s.NewReader(), s.Size(), 64<<10); !bytes.Equal(got, want) {
			t.Fatalf("txid %d, with readahead: content differs", txid)
		}
	}
}

func TestPageSourceTruncateThenGrow(t *testing.T) {
	h := truncateThenGrow(t)
	h.commitBytes(nil) // deleted
	for txid := ltx.TXID(1); txid <= h.txid; txid++ {
		s := openSource(t, h, txid, PageSourceOptions{})
		if got := readAll(t, s, s.Size(), 700); !bytes.Equal(got, h.states[txid]) {
			t.Fatalf("txid %d: content differs", txid)
		}
	}
}

// A WAL-mode database is presented in rollback mode: bytes 18 and 19 of the
// header read 1, everything else as stored.
func TestPageSourceRollbackHeader(t *testing.T) {
	h := newHistory(t, "w.db")
	db := append([]byte("SQLite format 3\x00"), make([]byte, 4096-16)...)
	db[16], db[17], db[18], db[19] = 0x10, 0, 2, 2
	db = append(db, bytes.Repeat([]byte{7}, 4096)...)
	h.commitBytes(db)
	s := openSource(t, h, 0, PageSourceOptions{Rollback: true})
	got := readAll(t, s, s.Size(), 4096)
	want := bytes.Clone(db)
	want[18], want[19] = 1, 1
	if !bytes.Equal(got, want) {
		t.Fatalf("header %x, want %x", got[:24], want[:24])
	}
	// Reads that split the two bytes.
	for _, off := range []int64{0, 17, 18, 19, 20} {
		b := make([]byte, 1)
		if _, err := s.ReadAt(context.Background(), b, off); err != nil || b[0] != want[off] {
			t.Fatalf("byte %d = %d, %v; want %d", off, b[0], err, want[off])
		}
	}
}

// A point read fetches the one frame it needs, nothing more; the page index
// is read once, at open.
func TestPageSourcePointRead(t *testing.T) {
	h := sqliteHistory(t)
	s := openSource(t, h, 3, PageSourceOptions{})
	if st := s.Stats(); st.PageBytes != 0 || st.IndexBytes == 0 {
		t.Fatalf("after open: %+v", st)
	}
	ps := int64(s.PageSize())
	b := make([]byte, ps)
	pgno := uint32(s.Size()/ps) / 2
	if _, err := s.ReadAt(context.Background(), b, int64(pgno-1)*ps); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, h.states[3][int64(pgno-1)*ps:int64(pgno)*ps]) {
		t.Fatal("page differs")
	}
	st := s.Stats()
	if st.Requests != 1 || st.PageBytes > int64(s.locs[pgno-1].size) {
		t.Fatalf("one page cost %+v; its frame is %d bytes", st, s.locs[pgno-1].size)
	}
	s.ReadAt(context.Background(), b, int64(pgno-1)*ps) // from memory now
	if st2 := s.Stats(); st2 != st {
		t.Fatalf("a second read of the page fetched again: %+v", st2)
	}
}

// Many readers at once get the same bytes, and each page is fetched once.
func TestPageSourceConcurrentReaders(t *testing.T) {
	h := sqliteHistory(t)
	s := openSource(t, h, 5, PageSourceOptions{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got := readAll(t, s.NewReader(), s.Size(), 4096*(i+1)); !bytes.Equal(got, h.states[5]) {
				errs <- fmt.Errorf("reader %d: content differs", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestPageSourceDiskCache(t *testing.T) {
	h := sqliteHistory(t)
	cache := t.TempDir()
	opt := PageSourceOptions{CacheDir: cache, ReplicaID: "file://" + h.rep.Root}
	s1 := openSource(t, h, 5, opt)
	if got := readAll(t, s1, s1.Size(), 64<<10); !bytes.Equal(got, h.states[5]) {
		t.Fatal("first read differs")
	}
	if s1.Stats().PageBytes == 0 {
		t.Fatal("first read fetched nothing")
	}
	s2 := openSource(t, h, 5, opt)
	if got := readAll(t, s2, s2.Size(), 64<<10); !bytes.Equal(got, h.states[5]) {
		t.Fatal("read from the cache differs")
	}
	if st := s2.Stats(); st.PageBytes != 0 {
		t.Fatalf("second source fetched %d bytes; the cache should have held them", st.PageBytes)
	}
	// Damaged cache data is noticed and fetched again.
	ents, _ := filepath.Glob(filepath.Join(cache, "*.data"))
	for _, e := range ents {
		f, err := os.OpenFile(e, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt(bytes.Repeat([]byte{0x5a}, 200), 150)
		f.Close()
	}
	s3 := openSource(t, h, 5, opt)
	if got := readAll(t, s3, s3.Size(), 64<<10); !bytes.Equal(got, h.states[5]) {
		t.Fatal("read over a damaged cache differs")
	}
	if s3.Stats().PageBytes == 0 {
		t.Fatal("damaged chunks were not fetched again")
	}
	// Another replica with files of the same names shares nothing.
	other := sqliteHistory(t)
	s4 := openSource(t, other, 5, PageSourceOptions{CacheDir: cache, ReplicaID: "file://" + other.rep.Root})
	if got := readAll(t, s4, s4.Size(), 64<<10); !bytes.Equal(got, other.states[5]) {
		t.Fatal("other replica's content differs")
	}
}

func TestPageSourceCorrupt(t *testing.T) {
	damage := func(t *testing.T, h *history, txid ltx.TXID, off int) {
		t.Helper()
		data, err := os.ReadFile(h.path(txid))
		if err != nil {
			t.Fatal(err)
		}
		if off < 0 {
			off += len(data)
		}
		data[off] ^= 0x55
		if err := os.WriteFile(h.path(txid), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	name := "app.db/0000/0000000000000002-0000000000000002.ltx: "
	t.Run("header", func(t *testing.T) {
		h := sqliteHistory(t)
		damage(t, h, 2, 1) // the magic
		_, err := OpenPageSource(context.Background(), h.rep, "app.db", 3, PageSourceOptions{})
		if !errors.Is(err, ErrCorrupt) || !strings.HasPrefix(err.Error(), name) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("index", func(t *testing.T) {
		h := sqliteHistory(t)
		damage(t, h, 2, -ltx.TrailerSize-9) // the last byte of the index: its end marker
		_, err := OpenPageSource(context.Background(), h.rep, "app.db", 3, PageSourceOptions{})
		if !errors.Is(err, ErrCorrupt) || !strings.HasPrefix(err.Error(), name) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("small file read whole", func(t *testing.T) {
		h := sqliteHistory(t)
		damage(t, h, 4, ltx.HeaderSize+20) // TXID 4 is small: its checksum is verified at open
		_, err := OpenPageSource(context.Background(), h.rep, "app.db", 4, PageSourceOptions{})
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "0000000000000004.ltx: ") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("page", func(t *testing.T) {
		h := sqliteHistory(t)
		info, _ := os.Stat(h.path(2))
		if info.Size() <= tailRead {
			t.Fatalf("file of TXID 2 has %d bytes; the test needs one read in parts", info.Size())
		}
		// A changed byte inside an LZ4 block may decode to other bytes
		// unnoticed (only reading the whole file checks that); a frame that
		// is not the page the index says is noticed.
		damage(t, h, 2, ltx.HeaderSize+3) // page 1's page number
		s := openSource(t, h, 2, PageSourceOptions{})
		_, err := s.ReadAt(context.Background(), make([]byte, 4096), 0)
		if !errors.Is(err, ErrCorrupt) || !strings.HasPrefix(err.Error(), name) {
			t.Fatalf("err = %v", err)
		}
		// The file is corrupt: its intact pages are not served either.
		_, err = s.ReadAt(context.Background(), make([]byte, 4096), 4096)
		if !errors.Is(err, ErrCorrupt) || !strings.HasPrefix(err.Error(), name) {
			t.Fatalf("read of another page of the file: err = %v", err)
		}
	})
	t.Run("chain", func(t *testing.T) {
		h := newHistory(t, "x.db")
		h.commitPages(512, 2, map[uint32][]byte{1: bytes.Repeat([]byte{1}, 512), 2: bytes.Repeat([]byte{2}, 512)})
		h.tamper = func(hdr *ltx.Header, post *ltx.Checksum) { hdr.PreApplyChecksum = ltx.ChecksumFlag | 12345 }
		h.commitPages(512, 2, map[uint32][]byte{1: bytes.Repeat([]byte{3}, 512)})
		_, err := OpenPageSource(context.Background(), h.rep, "x.db", 0, PageSourceOptions{})
		if !errors.Is(err, ErrChecksumMismatch) || !strings.HasPrefix(err.Error(), "x.db/0000/0000000000000002-0000000000000002.ltx: pre-apply checksum") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("past the end", func(t *testing.T) {
		h := sqliteHistory(t)
		_, err := OpenPageSource(context.Background(), h.rep, "app.db", 99, PageSourceOptions{})
		if !errors.Is(err, ErrTXIDNotFound) {
			t.Fatalf("err = %v", err)
		}
	})
}

// Pages decoded into reused buffers (slabs) stay right through eviction and
// reuse: a database three times the memory bound, whose pages alternate
// between three files (so one fetch decodes slabs of several files, each
// holding pages that are not next to each other), read whole by readers
// with readahead and by point readers at the same time, four times over,
// gives the same bytes (freed buffers are overwritten, so a page read
// after its slab was released would differ), and most full-size slabs got
// a reused buffer (without reuse every one is made anew).
func TestPageSourceSlabReuse(t *testing.T) {
	const ps, pages = 4096, 3 * 1024 // 12 MiB, with 4 MiB of memory
	h := newHistory(t, "big.db")
	random := func(seed int) []byte {
		b := make([]byte, ps)
		x := uint64(seed)*0x9e3779b97f4a7c15 + 1
		for i := range b {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			b[i] = byte(x)
		}
		return b
	}
	first := map[uint32][]byte{}
	for pgno := uint32(1); pgno <= pages; pgno++ {
		first[pgno] = random(int(pgno))
	}
	h.commitPages(ps, pages, first)
	every3 := map[uint32][]byte{}
	for pgno := uint32(2); pgno <= pages; pgno += 3 {
		every3[pgno] = random(pages + int(pgno))
	}
	h.commitPages(ps, pages, every3)
	run := map[uint32][]byte{}
	for pgno := uint32(100); pgno <= 1400; pgno += 2 {
		run[pgno] = random(2*pages + int(pgno))
	}
	txid := h.commitPages(ps, pages, run)
	want := h.states[txid]

	for len(freeSlabs) > 0 { // what earlier tests freed
		<-freeSlabs
	}
	poisonFreed, lruFloor = true, 4<<20
	t.Cleanup(func() { poisonFreed, lruFloor = false, 2*readaheadBytes })
	s := openSource(t, h, txid, PageSourceOptions{MemoryBytes: 1})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for round := range 4 {
		for i := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if got := readAll(t, s.NewReader(), s.Size(), (64<<10)*(i+1)+4096*i); !bytes.Equal(got, want) {
					errs <- fmt.Errorf("round %d, reader %d: content differs", round, i)
				}
			}()
		}
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b := make([]byte, 3*ps)
				for k := range 300 {
					off := int64((k*7919+i*104729)%(pages-3)) * ps
					if _, err := s.ReadAt(context.Background(), b, off); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(b, want[off:off+int64(len(b))]) {
						errs <- fmt.Errorf("round %d, point reader %d: pages at %d differ", round, i, off)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	used, made := s.slabs.used.Load(), s.slabs.made.Load()
	t.Logf("%d full-size slabs used, %d buffers made", used, made)
	if used < 20 || made > used/2 {
		t.Fatalf("%d full-size slabs used, %d buffers made: they are not being reused", used, made)
	}
}
