package restore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/sqlfs/sqlfs/pager/crc64iso"
	"github.com/superfly/ltx"
)

// What a page source verifies, and when.
//
// At open: every LTX file's header and trailer against each other and its
// name, its page index against its size (frames back to back, inside the
// page block), the pre/post-apply checksum chain between the files, and,
// for a file small enough to be read whole (tailRead), its file checksum.
//
// On every page read from a replica: the frame's page number and sizes, and
// the LZ4 block decodes to exactly one page. Each frame decoded is also
// hashed, and the hashes of the frames of a file are combined in file
// order as they arrive (coverage): when every frame of a file has been
// hashed, its file checksum is checked. A point query hashes the few frames
// it reads and checks nothing more, so it stays a few ranged reads.
//
// When every page of the database has been returned by some read (a copy
// out, or any reader that happened to read it all), the read that returns
// the last of them is held until every file the pages came from is fully
// verified — frames no read needed (pages later files replaced) are
// fetched then just to be hashed — and the database checksum of all the
// pages returned matches the post-apply checksum of the TXID. So a copy of
// the whole file that completes without an error is verified exactly as
// sqlfs restore verifies: it cannot end successfully over a corrupt file,
// whichever page is corrupt.
//
// A file that fails makes every later read that needs one of its pages
// fail (EIO through FUSE), its pages in memory are no longer served, its
// bytes in the disk cache are dropped, and an ERROR naming it is logged. A
// database checksum that does not match fails every later read.

// frameRun is frames lo..hi-1 of a file, hashed: the CRC-64 of the bytes
// the file checksum covers for them, n bytes.
type frameRun struct {
	lo, hi int
	crc    uint64
	n      int64
}

// frameSum is the hash of one frame: CRC of its hashed bytes, and how many.
type frameSum struct {
	crc uint64
	n   int64
}

// coverage is what is known of one file's frames: the runs hashed so far,
// sorted, disjoint and never adjacent (adjacent runs are merged), and the
// verdict once every frame is in one run.
type coverage struct {
	mu   sync.Mutex
	runs []frameRun
	ok   bool  // the file checksum matched
	err  error // the file failed verification
}

// failed returns the error a file failed with, if it did.
func (c *coverage) failed() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// add records the sums of frames lo, lo+1, ... Frames already hashed are
// skipped (a page read again after it left memory).
func (c *coverage) add(lo int, sums []frameSum, shift *crc64iso.Shift) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ok || c.err != nil {
		return
	}
	hi := lo + len(sums)
	for k := lo; k < hi; {
		// i is the first run that ends after k.
		i := sort.Search(len(c.runs), func(i int) bool { return c.runs[i].hi > k })
		if i < len(c.runs) && c.runs[i].lo <= k {
			k = c.runs[i].hi // hashed already
			continue
		}
		end := hi
		if i < len(c.runs) {
			end = min(end, c.runs[i].lo)
		}
		p := frameRun{lo: k, hi: end}
		for j := k; j < end; j++ {
			s := sums[j-lo]
			p.crc = combine(p.crc, s.crc, s.n, shift)
			p.n += s.n
		}
		c.insert(i, p)
		k = end
	}
}

// insert puts p at index i and merges it with adjacent runs.
func (c *coverage) insert(i int, p frameRun) {
	if i > 0 && c.runs[i-1].hi == p.lo {
		prev := &c.runs[i-1]
		prev.crc, prev.n, prev.hi = crc64iso.Combine(prev.crc, p.crc, p.n), prev.n+p.n, p.hi
		i--
	} else {
		c.runs = append(c.runs, frameRun{})
		copy(c.runs[i+1:], c.runs[i:])
		c.runs[i] = p
	}
	if i+1 < len(c.runs) && c.runs[i+1].lo == c.runs[i].hi {
		next := c.runs[i+1]
		r := &c.runs[i]
		r.crc, r.n, r.hi = crc64iso.Combine(r.crc, next.crc, next.n), r.n+next.n, next.hi
		c.runs = append(c.runs[:i+1], c.runs[i+2:]...)
	}
}

// missing returns the frame ranges [lo, hi) not hashed yet, of n frames;
// none once the file has a verdict.
func (c *coverage) missing(n int) [][2]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ok || c.err != nil {
		return nil
	}
	var out [][2]int
	k := 0
	for _, r := range c.runs {
		if r.lo > k {
			out = append(out, [2]int{k, r.lo})
		}
		k = r.hi
	}
	if k < n {
		out = append(out, [2]int{k, n})
	}
	return out
}

// combine returns the CRC of A‖B from those of A and B (n bytes).
func combine(a, b uint64, n int64, shift *crc64iso.Shift) uint64 {
	if shift != nil && n == shift.Len() {
		return shift.Combine(a, b)
	}
	return crc64iso.Combine(a, b, n)
}

// settle checks f's file checksum if every frame is hashed, and returns
// the file's error if it has failed, now or before.
func (s *PageSource) settle(f *fileIndex) error {
	failed, err := f.settle()
	if failed {
		s.failed(f, err)
	}
	return err
}

// fail records that f is corrupt (a frame that does not decode), unless
// it failed before, and returns its error.
func (s *PageSource) fail(f *fileIndex, err error) error {
	c := &f.check
	c.mu.Lock()
	first := c.err == nil
	if first {
		c.err, c.ok, c.runs = err, false, nil
	}
	err = c.err
	c.mu.Unlock()
	if first {
		s.failed(f, err)
	}
	return err
}

// failed reports a file found corrupt: logged as an error, and its bytes
// leave the disk cache.
func (s *PageSource) failed(f *fileIndex, err error) {
	s.log.Error("LTX file failed verification; reads of its pages fail from now on", "db", s.db, "file", f.path, "err", err)
	if s.disk != nil {
		s.disk.remove(f.cacheKey)
	}
}

// settle checks f's file checksum if every frame is hashed. It returns the
// file's error, if it has failed, and whether this call found it.
func (f *fileIndex) settle() (bool, error) {
	c := &f.check
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ok || c.err != nil {
		return false, c.err
	}
	crc := f.headSum
	switch {
	case len(f.frames) == 0:
	case len(c.runs) == 1 && c.runs[0].lo == 0 && c.runs[0].hi == len(f.frames):
		crc = crc64iso.Combine(crc, c.runs[0].crc, c.runs[0].n)
	default:
		return false, nil // not all hashed yet
	}
	if got := f.fileChecksum(crc); got != f.trailer.FileChecksum {
		c.err = errorf(ErrChecksumMismatch, "%s: file checksum %s does not match %s in its trailer: the file is corrupt", f.path, got, f.trailer.FileChecksum)
		c.runs = nil
		return true, c.err
	}
	c.ok, c.runs = true, nil
	return false, nil
}

// endOf returns where frame k of f ends.
func (f *fileIndex) endOf(k int) int64 {
	if k+1 < len(f.frames) {
		return f.frames[k+1]
	}
	return f.framesEnd
}

// hashFrames decodes and hashes every frame of f in data, which holds the
// file's bytes from off on and starts at a frame. The frames of the pages
// of b (nil: none) are decoded into it, with their CRCs; the others into a
// scratch page only to be hashed. It returns how many pages of b it
// decoded.
func (s *PageSource) hashFrames(f *fileIndex, data []byte, off int64, b *slab) (int, error) {
	var pgnos []uint32
	if b != nil {
		pgnos = b.pgnos
	}
	ps := int(s.pageSize)
	end := off + int64(len(data))
	k0 := sort.Search(len(f.frames), func(k int) bool { return f.frames[k] >= off })
	if f.verified || k0 == len(f.frames) || f.frames[k0] != off {
		return 0, nil // nothing to hash: verified already, or not at a frame
	}
	var sums []frameSum
	var scratch []byte
	j := 0 // the next of pgnos
	k := k0
	for ; k < len(f.frames) && f.endOf(k) <= end; k++ {
		frame := data[f.frames[k]-off : f.endOf(k)-off]
		var pgno uint32
		var dst []byte
		if j < len(pgnos) && s.locs[pgnos[j]-1].off == f.frames[k] {
			pgno, dst = pgnos[j], b.buf[j*ps:(j+1)*ps]
		} else {
			if scratch == nil {
				scratch = make([]byte, s.pageSize)
			}
			dst = scratch
		}
		hn, err := f.decodeFrame(frame, pgno, dst)
		if err != nil {
			return 0, s.fail(f, err)
		}
		c := crc64iso.Checksum(dst)
		sums = append(sums, frameSum{crc: s.pageShift.Combine(crc64iso.Checksum(frame[:hn]), c), n: int64(hn) + int64(s.pageSize)})
		if pgno != 0 {
			b.crcs[j] = c
			j++
		}
	}
	f.check.add(k0, sums, s.frameShift)
	if err := s.settle(f); err != nil {
		return 0, err
	}
	return j, nil
}

// completion tracks which pages of the database reads have returned, and
// the verification of everything once they all have.
type completion struct {
	mu     sync.Mutex
	served []uint64      // bit p-1 set: page p was returned
	left   uint32        // pages not yet returned
	sum    uint64        // XOR of ltx.ChecksumPage (without its flag) of the pages returned, lock page excluded
	run    chan struct{} // closed when the verification under way ends; nil: none
	ok     bool
	err    error // why verification failed (not a cancelled context)
}

// served records pages first.. (with the CRC of each page) as returned,
// and when that completes the database, waits for verifyAll. Reads after
// that wait for the same verification until it has passed.
func (s *PageSource) served(ctx context.Context, first uint32, pages []cachedPage) error {
	c := &s.done
	var pb [4]byte
	c.mu.Lock()
	for i, p := range pages {
		pgno := first + uint32(i)
		w, bit := (pgno-1)/64, uint64(1)<<((pgno-1)%64)
		if c.served[w]&bit != 0 {
			continue
		}
		c.served[w] |= bit
		c.left--
		if pgno != s.lockPgno {
			binary.BigEndian.PutUint32(pb[:], pgno)
			c.sum ^= s.pageShift.Combine(crc64iso.Checksum(pb[:]), p.crc)
		}
	}
	if c.left > 0 || c.ok {
		c.mu.Unlock()
		return nil
	}
	if c.err != nil {
		defer c.mu.Unlock()
		return c.err
	}
	run := c.run
	if run == nil {
		run = make(chan struct{})
		c.run = run
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			err := s.verifyAll(s.bg)
			c.mu.Lock()
			defer c.mu.Unlock()
			switch {
			case err == nil:
				c.ok = true
			case s.bg.Err() == nil:
				c.err = err
			}
			c.run = nil
			close(run)
		}()
	}
	c.mu.Unlock()
	select {
	case <-run:
	case <-ctx.Done():
		return ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ok {
		return nil
	}
	if c.err != nil {
		return c.err
	}
	return errors.New("verification was stopped")
}

// verifyAll fetches and hashes the frames of every file the database's
// pages come from that no read has hashed yet, checks each file checksum,
// then the database checksum of the pages returned against the post-apply
// checksum of the TXID.
func (s *PageSource) verifyAll(ctx context.Context) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}
	for _, f := range s.files {
		if f.verified || f.refs == 0 {
			continue
		}
		if err := s.settle(f); err != nil {
			return err
		}
		for _, gap := range f.check.missing(len(f.frames)) {
			for lo := gap[0]; lo < gap[1]; {
				hi := lo + 1
				for hi < gap[1] && f.endOf(hi)-f.frames[lo] <= maxSpan {
					hi++
				}
				select {
				case s.fetchSem <- struct{}{}:
				case <-ctx.Done():
					wg.Wait()
					return ctx.Err()
				}
				wg.Add(1)
				go func(lo, hi int) {
					defer wg.Done()
					defer func() { <-s.fetchSem }()
					off := f.frames[lo]
					data, release, err := s.readRange(ctx, f, off, f.endOf(hi-1)-off)
					if err == nil {
						_, err = s.hashFrames(f, data, off, nil)
						release()
					}
					if err != nil {
						fail(err)
					}
				}(lo, hi)
				lo = hi
			}
		}
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	for _, f := range s.files {
		if f.verified || f.refs == 0 {
			continue
		}
		if err := s.settle(f); err != nil {
			return err
		}
		if !f.check.isOK() {
			return fmt.Errorf("%s: not every frame was hashed", f.path)
		}
	}
	newest := s.files[0]
	if newest.hdr.NoChecksum() {
		return nil
	}
	s.done.mu.Lock()
	sum := ltx.ChecksumFlag | ltx.Checksum(s.done.sum)
	s.done.mu.Unlock()
	if sum != newest.trailer.PostApplyChecksum {
		err := errorf(ErrChecksumMismatch, "database %s at txid %s: checksum %s of its pages does not match post-apply checksum %s of %s",
			s.db, s.txid, sum, newest.trailer.PostApplyChecksum, newest.path)
		s.log.Error("historical database failed verification; reads fail from now on", "db", s.db, "err", err)
		return err
	}
	s.log.Debug("verified", "db", s.db, "txid", s.txid, "files", len(s.files))
	return nil
}

func (c *coverage) isOK() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ok
}
