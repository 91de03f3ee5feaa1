package restore

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc64"
	"os"
	"path/filepath"
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
// The cache is not bounded; delete the directory to empty it.
type diskCache struct {
	dir string
}

// diskChunk is the unit of the disk cache and so the smallest fetch when
// the cache is on: small enough that a point query fetches little per
// B-tree level, large enough that a sequential read is few requests.
const diskChunk = 32 << 10

// sumFlag marks a stored chunk CRC, so that zeros (a sparse hole) mean "absent".
const sumFlag = 1 << 63

func newDiskCache(dir string) (*diskCache, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("page cache: %w", err)
	}
	return &diskCache{dir: dir}, nil
}

// cacheKey names one LTX file of one replica in the cache.
func cacheKey(replica, path string, size int64, fileChecksum uint64) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%d\x00%016x", replica, path, size, fileChecksum)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// read returns n bytes at off of a file of size bytes, taking the chunks it
// has and fetching the others as runs of consecutive chunks (clipped to the
// file), which it then keeps.
func (c *diskCache) read(key string, size, off, n int64, fetch func(off, n int64) ([]byte, error)) ([]byte, error) {
	data, err := os.OpenFile(filepath.Join(c.dir, key+".data"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("page cache: %w", err)
	}
	defer data.Close()
	sums, err := os.OpenFile(filepath.Join(c.dir, key+".sums"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("page cache: %w", err)
	}
	defer sums.Close()

	first, last := off/diskChunk, (off+n-1)/diskChunk
	buf := make([]byte, min(size, (last+1)*diskChunk)-first*diskChunk)
	chunk := func(i int64) []byte {
		return buf[(i-first)*diskChunk : min(size, (i+1)*diskChunk)-first*diskChunk]
	}
	var sb [8]byte
	for i := first; i <= last; {
		if c.load(data, sums, i, chunk(i)) {
			i++
			continue
		}
		j := i + 1 // the run of missing chunks i..j-1
		for j <= last && !c.load(data, sums, j, chunk(j)) {
			j++
		}
		start, end := i*diskChunk, min(size, j*diskChunk)
		b, err := fetch(start, end-start)
		if err != nil {
			return nil, err
		}
		copy(buf[start-first*diskChunk:], b)
		for k := i; k < j; k++ {
			ch := chunk(k)
			if _, err := data.WriteAt(ch, k*diskChunk); err != nil {
				continue // a cache that cannot write only fetches again
			}
			binary.BigEndian.PutUint64(sb[:], sumFlag|crc64.Checksum(ch, crcTable))
			sums.WriteAt(sb[:], k*8)
		}
		i = j
	}
	return buf[off-first*diskChunk : off-first*diskChunk+n], nil
}

// load fills b with chunk i if the cache holds it intact.
func (c *diskCache) load(data, sums *os.File, i int64, b []byte) bool {
	var sb [8]byte
	if n, _ := sums.ReadAt(sb[:], i*8); n != 8 {
		return false
	}
	want := binary.BigEndian.Uint64(sb[:])
	if want == 0 {
		return false
	}
	if n, _ := data.ReadAt(b, i*diskChunk); n != len(b) {
		return false
	}
	return sumFlag|crc64.Checksum(b, crcTable) == want
}

var crcTable = crc64.MakeTable(crc64.ISO)
