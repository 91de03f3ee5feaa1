package restore

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sqlfs/sqlfs/pager/crc64iso"
)

// diskCache keeps byte ranges of LTX files fetched from a replica on local
// disk, so a second look at the same history (another query, another mount)
// does not fetch them again.
//
// An LTX file never changes once stored under its name, so a range of it
// can be kept forever. The key of a file covers the replica, its name, its
// size and its file checksum: a replica recreated with another history under
// the same names gets other keys. Each file is cached as a sparse copy at
// the same offsets (KEY.data), in chunks of diskChunk bytes, plus one 8-byte
// CRC-64 per chunk (KEY.sums) written after the chunk: a chunk is used only
// when its CRC is there and matches, so a crash half way through writing
// one (or two mounts writing the same one) costs a refetch, never bad bytes.
//
// The cache is bounded: it holds at most max bytes of chunks and sums (as
// this process counts them: what it found at start plus what it wrote).
// Past that, whole entries (a file's .data and .sums) leave it, least
// recently used first; the entry being written is never evicted, and a chunk
// that would not fit even then is not kept (a single LTX file larger than
// the bound is cached only in part). Several processes may share the
// directory; each keeps its own count (one per directory for all its page
// sources), so together they may exceed the bound by what the others wrote
// since they started. A file that fails verification leaves the cache
// (remove).
type diskCache struct {
	dir string
	max int64
	log *slog.Logger

	mu      sync.Mutex
	used    int64
	entries map[string]*cacheEntry // by key
}

// cacheEntry is what the cache knows of one file it holds.
type cacheEntry struct {
	bytes   int64     // chunk and sum bytes written
	lastUse time.Time // at start, the .data file's modification time
	touched time.Time // when lastUse was last written to the file's mtime
}

// DefaultCacheBytes is the disk cache bound unless told otherwise.
const DefaultCacheBytes = 2 << 30

// diskChunk is the unit of the disk cache and so the smallest fetch when
// the cache is on: small enough that a point query fetches little per
// B-tree level, large enough that a sequential read is few requests.
const diskChunk = 32 << 10

// sumFlag marks a stored chunk CRC, so that zeros (a sparse hole) mean "absent".
const sumFlag = 1 << 63

// openCaches are the caches this process uses, by directory: the page
// sources of one mount (several databases) share one count.
var openCaches = struct {
	sync.Mutex
	m map[string]*diskCache
}{m: map[string]*diskCache{}}

// sharedDiskCache returns this process's cache in dir, opening it on first
// use; a later call may lower its bound.
func sharedDiskCache(dir string, maxBytes int64, log *slog.Logger) (*diskCache, error) {
	openCaches.Lock()
	defer openCaches.Unlock()
	if c := openCaches.m[dir]; c != nil {
		if maxBytes > 0 {
			c.mu.Lock()
			c.max = min(c.max, maxBytes)
			c.evict("", 0)
			c.mu.Unlock()
		}
		return c, nil
	}
	c, err := newDiskCache(dir, maxBytes, log)
	if err == nil {
		openCaches.m[dir] = c
	}
	return c, err
}

// newDiskCache opens the cache in dir, bounded to maxBytes (0: the
// default), and counts what it already holds.
func newDiskCache(dir string, maxBytes int64, log *slog.Logger) (*diskCache, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultCacheBytes
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("page cache: %w", err)
	}
	c := &diskCache{dir: dir, max: maxBytes, log: log, entries: map[string]*cacheEntry{}}
	names, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("page cache: %w", err)
	}
	for _, de := range names {
		key, ok := strings.CutSuffix(de.Name(), ".data")
		if !ok {
			continue
		}
		e := &cacheEntry{}
		for _, ext := range []string{".data", ".sums"} {
			if fi, err := os.Stat(filepath.Join(dir, key+ext)); err == nil {
				e.bytes += allocated(fi)
				if ext == ".data" {
					e.lastUse, e.touched = fi.ModTime(), fi.ModTime()
				}
			}
		}
		c.entries[key] = e
		c.used += e.bytes
	}
	c.mu.Lock()
	c.evict("", 0)
	c.mu.Unlock()
	return c, nil
}

// use marks key as used now, and remembers it on disk (the .data file's
// modification time) at most once a minute.
func (c *diskCache) use(key string) *cacheEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[key]
	if e == nil {
		e = &cacheEntry{}
		c.entries[key] = e
	}
	now := time.Now()
	e.lastUse = now
	if now.Sub(e.touched) > time.Minute {
		e.touched = now
		os.Chtimes(filepath.Join(c.dir, key+".data"), now, now)
	}
	return e
}

// reserve makes room for n more bytes of entry key, evicting others, and
// says whether they fit.
func (c *diskCache) reserve(key string, n int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[key]
	if e == nil {
		return false // evicted while being read: its files are gone
	}
	if c.used+n > c.max {
		c.evict(key, n)
	}
	if c.used+n > c.max {
		return false
	}
	c.used += n
	e.bytes += n
	return true
}

// evict removes least recently used entries other than keep until n more
// bytes fit under the bound, or only keep is left. Called with c.mu held.
func (c *diskCache) evict(keep string, n int64) {
	for c.used+n > c.max {
		var oldest string
		for key, e := range c.entries {
			if key != keep && (oldest == "" || e.lastUse.Before(c.entries[oldest].lastUse)) {
				oldest = key
			}
		}
		if oldest == "" {
			return
		}
		c.drop(oldest)
	}
}

// drop deletes an entry's files. Called with c.mu held.
func (c *diskCache) drop(key string) {
	for _, ext := range []string{".sums", ".data"} {
		if err := os.Remove(filepath.Join(c.dir, key+ext)); err != nil && !os.IsNotExist(err) && c.log != nil {
			c.log.Warn("page cache: cannot remove an entry", "err", err)
		}
	}
	if e := c.entries[key]; e != nil {
		c.used -= e.bytes
		delete(c.entries, key)
	}
}

// remove drops the entry of key (a file that failed verification).
func (c *diskCache) remove(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop(key)
}

// allocated is the disk space a file takes (its blocks: cache files are sparse).
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// cacheKey names one LTX file of one replica in the cache.
func cacheKey(replica, path string, size int64, fileChecksum uint64) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%d\x00%016x", replica, path, size, fileChecksum)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// read returns n bytes at off of a file of size bytes, taking the chunks it
// has and fetching the others as runs of consecutive chunks (clipped to the
// file) into place, which it then keeps. The bytes are valid until release
// is called, which the caller must do.
func (c *diskCache) read(key string, size, off, n int64, fetch func(b []byte, off int64) error) (b []byte, release func(), err error) {
	c.use(key)
	data, err := os.OpenFile(filepath.Join(c.dir, key+".data"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("page cache: %w", err)
	}
	defer data.Close()
	sums, err := os.OpenFile(filepath.Join(c.dir, key+".sums"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("page cache: %w", err)
	}
	defer sums.Close()

	first, last := off/diskChunk, (off+n-1)/diskChunk
	base := first * diskChunk
	buf := getBuf(int(min(size, (last+1)*diskChunk) - base))
	chunk := func(i int64) []byte { // chunk first+i
		return buf[i*diskChunk : min(int64(len(buf)), (i+1)*diskChunk)]
	}
	nch := last - first + 1

	// Which chunks are here: the sums of all in one read, then, if any is
	// there, the data of all in one read (holes read as zeros), each chunk
	// checked against its sum.
	have := make([]bool, nch)
	sb := make([]byte, 8*nch)
	got, _ := sums.ReadAt(sb, first*8)
	stored := false
	for i := range nch {
		stored = stored || (i+1)*8 <= int64(got) && binary.BigEndian.Uint64(sb[i*8:]) != 0
	}
	if stored {
		got, _ := data.ReadAt(buf, base)
		for i := range nch {
			ch := chunk(i)
			have[i] = (i+1)*8 <= int64(len(sb)) && binary.BigEndian.Uint64(sb[i*8:]) != 0 &&
				i*diskChunk+int64(len(ch)) <= int64(got) &&
				sumFlag|crc64iso.Checksum(ch) == binary.BigEndian.Uint64(sb[i*8:])
		}
	}

	for i := int64(0); i < nch; {
		if have[i] {
			i++
			continue
		}
		j := i + 1 // the run of missing chunks i..j-1
		for j < nch && !have[j] {
			j++
		}
		start, end := i*diskChunk, min(int64(len(buf)), j*diskChunk)
		if err := fetch(buf[start:end], base+start); err != nil {
			putBuf(buf)
			return nil, nil, err
		}
		// Keep the chunks of the run that fit: their bytes in one write,
		// then their sums in another.
		k := i
		for k < j && c.reserve(key, int64(len(chunk(k)))+8) {
			k++
		}
		if k > i {
			keep := buf[start:min(int64(len(buf)), k*diskChunk)]
			if _, err := data.WriteAt(keep, base+start); err == nil { // a cache that cannot write only fetches again
				for m := i; m < k; m++ {
					binary.BigEndian.PutUint64(sb[m*8:], sumFlag|crc64iso.Checksum(chunk(m)))
				}
				sums.WriteAt(sb[i*8:k*8], (first+i)*8)
			}
		}
		i = j
	}
	return buf[off-base : off-base+n], func() { putBuf(buf) }, nil
}
