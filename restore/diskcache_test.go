package restore

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// The disk cache stays under its bound by evicting whole entries, least
// recently used first, keeps a file larger than the bound only in part,
// and applies the bound to what an earlier process left.
func TestDiskCacheBound(t *testing.T) {
	dir := t.TempDir()
	const per = diskChunk + 8 // one chunk and its sum
	c, err := newDiskCache(dir, 5*per, nil)
	if err != nil {
		t.Fatal(err)
	}
	content := func(key string, size int64) []byte {
		return bytes.Repeat([]byte(key[:1]), int(size))
	}
	fetched := map[string]int64{}
	read := func(key string, chunks int64) {
		t.Helper()
		size := chunks * diskChunk
		got, release, err := c.read(key, size, 0, size, func(b []byte, off int64) error {
			fetched[key] += int64(len(b))
			copy(b, content(key, size)[off:])
			return nil
		})
		if err != nil || !bytes.Equal(got, content(key, size)) {
			t.Fatalf("read %s: %v", key, err)
		}
		release()
	}
	exists := func(key string) bool {
		_, err := os.Stat(filepath.Join(dir, key+".data"))
		return err == nil
	}
	onDisk := func() int64 {
		var n int64
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			fi, _ := e.Info()
			n += allocated(fi)
		}
		return n
	}

	read("a", 2)
	read("b", 2)
	read("a", 2) // from the cache: a is now more recent than b
	if fetched["a"] != 2*diskChunk {
		t.Fatalf("a fetched %d bytes, want %d (once)", fetched["a"], 2*diskChunk)
	}
	read("c", 2) // 6 chunks > 5: the least recently used entry (b) goes, whole
	if exists("b") || !exists("a") || !exists("c") {
		t.Fatalf("after c: a %v b %v c %v, want a and c kept, b evicted", exists("a"), exists("b"), exists("c"))
	}
	if _, err := os.Stat(filepath.Join(dir, "b.sums")); !os.IsNotExist(err) {
		t.Fatal("b's sums were left behind")
	}
	if c.used > 5*per {
		t.Fatalf("cache counts %d bytes, bound %d", c.used, 5*per)
	}

	read("d", 8) // larger than the bound: everything else goes, d kept in part
	if exists("a") || exists("c") {
		t.Fatal("older entries kept beside a file larger than the bound")
	}
	if c.used > 5*per || onDisk() > 5*per+2*4096 {
		t.Fatalf("cache counts %d bytes, %d on disk; bound %d", c.used, onDisk(), 5*per)
	}
	before := fetched["d"]
	read("d", 8)
	if got := fetched["d"] - before; got != 3*diskChunk {
		t.Fatalf("second read of d fetched %d bytes, want the 3 chunks that did not fit", got)
	}

	// A process starting with a smaller bound trims what it finds.
	c2, err := newDiskCache(dir, 2*per, nil)
	if err != nil {
		t.Fatal(err)
	}
	if exists("d") || c2.used != 0 {
		t.Fatalf("a cache opened with a smaller bound kept d (%d bytes)", c2.used)
	}
}

// A read over chunks the cache holds in part fetches only the runs it
// lacks, and a chunk whose bytes were damaged on disk is fetched again,
// not served: the bytes returned are the file's either way.
func TestDiskCacheRuns(t *testing.T) {
	dir := t.TempDir()
	c, err := newDiskCache(dir, 1<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	const size = 6*diskChunk + 1000 // a short last chunk
	content := make([]byte, size)
	for i := range content {
		content[i] = byte(i*7 + i/diskChunk)
	}
	var fetched [][2]int64
	read := func(off, n int64) {
		t.Helper()
		fetched = nil
		got, release, err := c.read("k", size, off, n, func(b []byte, off int64) error {
			fetched = append(fetched, [2]int64{off, int64(len(b))})
			copy(b, content[off:])
			return nil
		})
		if err != nil || !bytes.Equal(got, content[off:off+n]) {
			t.Fatalf("read %d+%d: %v, or the bytes differ", off, n, err)
		}
		release()
	}
	read(diskChunk+10, diskChunk) // chunks 1 and 2
	if len(fetched) != 1 || fetched[0] != [2]int64{diskChunk, 2 * diskChunk} {
		t.Fatalf("first read fetched %v, want chunks 1-2 in one", fetched)
	}
	read(0, size) // chunk 0, then 3-6 (the last one short)
	if len(fetched) != 2 || fetched[0] != [2]int64{0, diskChunk} || fetched[1] != [2]int64{3 * diskChunk, size - 3*diskChunk} {
		t.Fatalf("whole read fetched %v, want chunk 0 and chunks 3-6", fetched)
	}
	read(0, size)
	if len(fetched) != 0 {
		t.Fatalf("third read fetched %v, want nothing", fetched)
	}
	f, err := os.OpenFile(filepath.Join(dir, "k.data"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xff, 0xfe}, 4*diskChunk+5) // damage chunk 4
	f.Close()
	read(100, size-200)
	if len(fetched) != 1 || fetched[0] != [2]int64{4 * diskChunk, diskChunk} {
		t.Fatalf("read over a damaged chunk fetched %v, want chunk 4 alone", fetched)
	}
}
