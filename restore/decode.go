package restore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/pierrec/lz4/v4"
	"github.com/sqlfs/sqlfs/pager/crc64iso"
	"github.com/superfly/ltx"
)

// This file decodes an LTX file whose pages are LZ4 blocks (every file
// ltx.Encoder writes) straight from the download buffers, decompressing,
// checksumming and writing batches of pages on every core, and verifies what
// ltx.Decoder verifies: the header, every page header, the page index against
// the decoded pages, the file checksum in the trailer, and for a snapshot its
// post-apply checksum.
//
// Invariant: the file checksum is the CRC-64 ISO of the same bytes
// ltx.Decoder hashes (header, page headers and size prefixes, uncompressed
// pages, page index, trailer without its last 8 bytes). Each page is hashed
// once; its share of the file checksum and its page checksum (which hashes
// the page number and then the same page) are both derived from that one CRC
// by combination, and the batches' CRCs are combined in file order.

// framePrefix is a page header and the size of the LZ4 block after it.
const framePrefix = ltx.PageHeaderSize + 4

// batch is a run of consecutive frames of one file, decoded by one worker.
type batch struct {
	first  int      // index in the file of the first page, for messages
	pgnos  []uint32 // page numbers, ascending
	blocks [][]byte // LZ4 blocks, slices of the download buffers
	write  []bool   // whether the page goes into the output
	pins   []*chunk // the chunks blocks point into, each pinned once

	// Results, set by decodeBatch.
	crc  uint64 // of the bytes the file checksum hashes for these frames
	sum  uint64 // XOR of the page checksums, lock page excluded
	wsum uint64 // XOR of the page checksums of the pages written
	err  error
	bad  bool // err is corruption, not a failed write
}

// batchDecoder holds what every batch of one file shares.
type batchDecoder struct {
	pageSize  uint32
	lockPgno  uint32
	pageShift *crc64iso.Shift // combines a CRC with that of one page
	out       io.WriterAt
	bufs      sync.Pool   // page buffers of maxRun bytes
	failed    atomic.Bool // a batch has an error: stop handing out more
}

func newBatchDecoder(pageSize uint32, out io.WriterAt) *batchDecoder {
	d := &batchDecoder{pageSize: pageSize, lockPgno: ltx.LockPgno(pageSize), pageShift: crc64iso.NewShift(int64(pageSize)), out: out}
	n := batchPages(pageSize) * int(pageSize)
	d.bufs.New = func() any { return make([]byte, n) }
	return d
}

// batchPages is how many pages one batch holds.
func batchPages(pageSize uint32) int { return max(1, maxRun/int(pageSize)) }

// decode decompresses and checksums every page of b and writes the pages
// b.write selects, in runs of consecutive page numbers.
func (d *batchDecoder) decode(b *batch) {
	defer func() {
		// The blocks pin download buffers: let them go as soon as the
		// batch is done, not when the file is.
		b.blocks, b.write = nil, nil
		b.unpin()
		if b.err != nil {
			d.failed.Store(true)
		}
	}()
	ps := int(d.pageSize)
	buf := d.bufs.Get().([]byte)
	defer d.bufs.Put(buf)
	var (
		crc       uint64
		sum, wsum uint64
		prefix    [framePrefix]byte
	)
	for i, pgno := range b.pgnos {
		page := buf[i*ps : (i+1)*ps]
		if n, err := lz4.UncompressBlock(b.blocks[i], page); err != nil || n != ps {
			if err == nil {
				err = fmt.Errorf("%d bytes, not %d", n, ps)
			}
			b.err, b.bad = fmt.Errorf("page %d: decompress block: %w", b.first+i+1, err), true
			return
		}
		c := crc64iso.Checksum(page)
		binary.BigEndian.PutUint32(prefix[0:], pgno)
		binary.BigEndian.PutUint16(prefix[4:], ltx.PageHeaderFlagSize)
		binary.BigEndian.PutUint32(prefix[6:], uint32(len(b.blocks[i])))
		crc = d.pageShift.Combine(crc64iso.Update(crc, prefix[:]), c)
		if pgno != d.lockPgno {
			// ltx.ChecksumPage: the CRC of the big-endian pgno, then the page.
			s := d.pageShift.Combine(crc64iso.Update(0, prefix[:4]), c)
			sum ^= s
			if b.write[i] {
				wsum ^= s
			}
		}
	}
	b.crc, b.sum, b.wsum = crc, sum, wsum

	for i := 0; i < len(b.pgnos); {
		if !b.write[i] {
			i++
			continue
		}
		j := i + 1
		for j < len(b.pgnos) && b.write[j] && b.pgnos[j] == b.pgnos[j-1]+1 {
			j++
		}
		if _, err := d.out.WriteAt(buf[i*ps:j*ps], int64(b.pgnos[i]-1)*int64(ps)); err != nil {
			b.err = err
			return
		}
		i = j
	}
}

// add appends a frame whose LZ4 block is in chunk c (nil: a copy) and pins c.
func (b *batch) add(pgno uint32, block []byte, c *chunk, write bool) {
	b.pgnos = append(b.pgnos, pgno)
	b.blocks = append(b.blocks, block)
	b.write = append(b.write, write)
	if c != nil && (len(b.pins) == 0 || b.pins[len(b.pins)-1] != c) {
		c.pin()
		b.pins = append(b.pins, c)
	}
}

// unpin lets go of the chunks b's blocks point into; they must not be read
// after.
func (b *batch) unpin() {
	for _, c := range b.pins {
		c.release()
	}
	b.pins = nil
}

// hashedLen is how many bytes of the file checksum b's frames account for.
func (b *batch) hashedLen(pageSize uint32) int64 {
	return int64(len(b.pgnos)) * (framePrefix + int64(pageSize))
}

// chunkReader reads one file's bytes from the fetcher's download buffers,
// returning slices of them where it can.
type chunkReader struct {
	src *fetcher
	buf []byte // unread bytes of the current chunk
	off int64  // file offset of buf[0]
}

// next returns the next n bytes: a slice of a download buffer when they lie
// in one, else a copy. A slice may be read until the reader moves past its
// chunk; see view to keep it longer.
func (r *chunkReader) next(n int) ([]byte, error) {
	b, _, err := r.view(n)
	return b, err
}

// view is next, and also returns the chunk the bytes are a slice of, nil
// for a copy. Pinning that chunk before the next read keeps the bytes valid
// until it is released.
func (r *chunkReader) view(n int) ([]byte, *chunk, error) {
	if len(r.buf) >= n {
		b := r.buf[:n:n]
		r.buf = r.buf[n:]
		r.off += int64(n)
		return b, r.src.current(), nil
	}
	out := make([]byte, 0, n)
	for len(out) < n {
		if len(r.buf) == 0 {
			b, err := r.src.take()
			if err == io.EOF {
				return nil, nil, io.ErrUnexpectedEOF
			} else if err != nil {
				return nil, nil, err
			}
			r.buf = b
		}
		k := min(n-len(out), len(r.buf))
		out = append(out, r.buf[:k]...)
		r.buf = r.buf[k:]
	}
	r.off += int64(n)
	return out, nil, nil
}

func (r *chunkReader) ReadByte() (byte, error) {
	b, err := r.next(1)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

// atEnd reports whether the file has no bytes left.
func (r *chunkReader) atEnd() (bool, error) {
	if len(r.buf) > 0 {
		return false, nil
	}
	b, err := r.src.take()
	if err == io.EOF {
		return true, nil
	} else if err != nil {
		return false, err
	}
	r.buf = b
	return len(b) == 0, nil
}

// blockFormat reports whether the file the fetcher is at stores its first
// page as an LZ4 block (or has no pages), which decodeBlocks handles; older
// files store LZ4 frames and go through ltx.Decoder. It consumes nothing.
func blockFormat(src *fetcher) (bool, error) {
	b, err := src.take()
	if err == io.EOF {
		return false, nil
	} else if err != nil {
		return false, err
	}
	src.unread(len(b))
	if len(b) < ltx.HeaderSize+ltx.PageHeaderSize {
		return false, nil // too short: let ltx.Decoder say why
	}
	var ph ltx.PageHeader
	if err := ph.UnmarshalBinary(b[ltx.HeaderSize:]); err != nil {
		return false, nil
	}
	return ph.IsZero() || ph.Flags&ltx.PageHeaderFlagSize != 0, nil
}

// decodeHeader reads and verifies the header; it returns the running file
// checksum.
func (f *ltxFile) decodeHeader(r *chunkReader) (uint64, error) {
	b, err := r.next(ltx.HeaderSize)
	if err != nil {
		return 0, f.readErr("header", err)
	}
	if err := f.hdr.UnmarshalBinary(b); err != nil {
		return 0, f.corrupt(fmt.Errorf("header: unmarshal header: %w", err))
	}
	if err := f.hdr.Validate(); err != nil {
		return 0, f.corrupt(fmt.Errorf("header: %w", err))
	}
	return crc64iso.Checksum(b), nil
}

// readErr is a failure to read or parse part of the file. It reports
// corruption; apply prefers the fetcher's error if a download failed.
func (f *ltxFile) readErr(what string, err error) error {
	return f.corrupt(fmt.Errorf("%s: %w", what, err))
}

// applyBlocks decodes the pages of a block-format file after its header,
// hands those pw claims to workers that decompress, checksum and write them,
// and verifies the rest of the file. crc is the file checksum so far.
func (f *ltxFile) applyBlocks(ctx context.Context, r *chunkReader, crc uint64, pw *pageWriter) error {
	pw.setCommit(f.hdr.Commit)
	d := pw.batchDecoder()
	per := batchPages(f.hdr.PageSize)
	var (
		batches []*batch
		wg      sync.WaitGroup
		sem     = make(chan struct{}, runtime.GOMAXPROCS(0))
		cur     *batch
		pgnos   []uint32 // every page number, for the page index
		prev    uint32
	)
	wait := func() error {
		wg.Wait()
		for _, b := range batches {
			if b.err != nil {
				if b.bad {
					return f.corrupt(b.err)
				}
				return b.err
			}
		}
		return nil
	}
	dispatch := func(b *batch) {
		batches = append(batches, b)
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.decode(b)
			<-sem
		}()
	}
	stop := func(err error) error {
		if werr := wait(); werr != nil {
			return werr // an earlier page's problem
		}
		return err
	}

	for n := 0; ; n++ {
		if n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return stop(err)
			}
		}
		hb, err := r.next(ltx.PageHeaderSize)
		if err != nil {
			return stop(f.readErr(fmt.Sprintf("page %d", n+1), err))
		}
		var ph ltx.PageHeader
		_ = ph.UnmarshalBinary(hb)
		if ph.IsZero() {
			break // hashed after the pages
		}
		if err := ph.Validate(); err != nil {
			return stop(f.corrupt(fmt.Errorf("page %d: %w", n+1, err)))
		}
		if ph.Flags&ltx.PageHeaderFlagSize == 0 {
			return stop(f.corrupt(fmt.Errorf("page %d: an LZ4 frame among LZ4 blocks", n+1)))
		}
		if ph.Pgno <= prev || ph.Pgno > f.hdr.Commit {
			return stop(f.corrupt(fmt.Errorf("page %d: page number %d after %d, commit %d", n+1, ph.Pgno, prev, f.hdr.Commit)))
		}
		prev = ph.Pgno
		sb, err := r.next(4)
		if err != nil {
			return stop(f.readErr(fmt.Sprintf("page %d: read data size", n+1), err))
		}
		size := binary.BigEndian.Uint32(sb)
		if size > uint32(lz4.CompressBlockBound(int(f.hdr.PageSize))) {
			return stop(f.corrupt(fmt.Errorf("page %d: LZ4 block of %d bytes for a %d-byte page", n+1, size, f.hdr.PageSize)))
		}
		block, c, err := r.view(int(size))
		if err != nil {
			return stop(f.readErr(fmt.Sprintf("page %d: read compressed data", n+1), err))
		}
		if cur == nil {
			cur = &batch{first: n, pgnos: make([]uint32, 0, per), blocks: make([][]byte, 0, per), write: make([]bool, 0, per)}
		}
		cur.add(ph.Pgno, block, c, pw.claim(ph.Pgno)) // pins c before the next read
		pgnos = append(pgnos, ph.Pgno)
		if len(cur.pgnos) == per {
			dispatch(cur)
			cur = nil
			if d.failed.Load() {
				return stop(nil)
			}
		}
	}
	if cur != nil {
		batches = append(batches, cur)
		d.decode(cur) // the last, short batch: on this goroutine
	}
	if err := wait(); err != nil {
		return err
	}
	var xor uint64
	for _, b := range batches {
		crc = crc64iso.Combine(crc, b.crc, b.hashedLen(f.hdr.PageSize))
		xor ^= b.sum
		pw.addSum(b.wsum)
	}
	crc = crc64iso.Update(crc, make([]byte, ltx.PageHeaderSize)) // the end of the pages
	sum := ltx.ChecksumFlag | ltx.Checksum(xor)

	// The page index must name exactly the decoded pages, in order.
	i := 0
	next := int64(ltx.HeaderSize)
	hash := func(b []byte) { crc = crc64iso.Update(crc, b) }
	if err := parseIndex(r, hash, func(pgno uint32, offset, size int64) error {
		switch {
		case i >= len(pgnos) || pgno != pgnos[i]:
			return errors.New("page index does not match the decoded page numbers")
		case offset < next:
			return fmt.Errorf("page index pgno %d offset %d overlaps previous frame ending at %d", pgno, offset, next)
		case size <= ltx.PageHeaderSize || offset > math.MaxInt64-size:
			return fmt.Errorf("page index pgno %d has invalid frame size %d", pgno, size)
		}
		next = offset + size
		i++
		return nil
	}); err != nil {
		return f.readErr("read page index", err)
	}
	if i != len(pgnos) {
		return f.corrupt(fmt.Errorf("page index has %d entries but %d pages were decoded", i, len(pgnos)))
	}

	tb, err := r.next(ltx.TrailerSize)
	if err != nil {
		return f.readErr("read trailer", err)
	}
	crc = crc64iso.Update(crc, tb[:ltx.TrailerChecksumOffset])
	_ = f.trailer.UnmarshalBinary(tb)
	if end, err := r.atEnd(); err != nil {
		return err
	} else if !end {
		return f.corrupt(errors.New("unexpected data after trailer"))
	}
	if ltx.ChecksumFlag|ltx.Checksum(crc) != f.trailer.FileChecksum {
		return f.corrupt(ltx.ErrChecksumMismatch)
	}
	if f.hdr.IsSnapshot() && !f.hdr.NoChecksum() && f.trailer.PostApplyChecksum != sum {
		return f.corrupt(fmt.Errorf("post-apply checksum in trailer (%s) does not match calculated checksum (%s)", f.trailer.PostApplyChecksum, sum))
	}
	return nil
}

// parseIndex reads the page index (records of uvarint pgno, offset and
// size, a zero pgno, then the index size as 8 bytes), passing every byte
// consumed to hash and every record to fn, and checks that page numbers
// ascend and that the size field counts the bytes read.
func parseIndex(r io.ByteReader, hash func([]byte), fn func(pgno uint32, offset, size int64) error) error {
	var (
		buf      []byte
		consumed int64
		prev     uint64
	)
	uvarint := func() (uint64, error) {
		var x uint64
		for i, s := 0, uint(0); i < binary.MaxVarintLen64; i, s = i+1, s+7 {
			b, err := r.ReadByte()
			if err != nil {
				return 0, err
			}
			buf = append(buf, b)
			if b < 0x80 {
				if i == binary.MaxVarintLen64-1 && b > 1 {
					break
				}
				return x | uint64(b)<<s, nil
			}
			x |= uint64(b&0x7f) << s
		}
		return 0, errors.New("uvarint overflows 64 bits")
	}
	for {
		buf = buf[:0]
		pgno, err := uvarint()
		if err != nil {
			return fmt.Errorf("pgno: %w", err)
		}
		if pgno != 0 {
			if pgno > math.MaxUint32 || pgno <= prev {
				return fmt.Errorf("page index pgno %d after %d", pgno, prev)
			}
			offset, err := uvarint()
			if err != nil {
				return fmt.Errorf("offset: %w", err)
			}
			size, err := uvarint()
			if err != nil {
				return fmt.Errorf("size: %w", err)
			}
			if offset > math.MaxInt64 || size > math.MaxInt64 {
				return fmt.Errorf("page index pgno %d offset/size out of range", pgno)
			}
			if err := fn(uint32(pgno), int64(offset), int64(size)); err != nil {
				return err
			}
			prev = pgno
		}
		hash(buf)
		consumed += int64(len(buf))
		if pgno == 0 {
			break
		}
	}
	var size [8]byte
	for i := range size {
		b, err := r.ReadByte()
		if err != nil {
			return fmt.Errorf("index size: %w", err)
		}
		size[i] = b
	}
	hash(size[:])
	if n := binary.BigEndian.Uint64(size[:]); n != uint64(consumed) {
		return fmt.Errorf("page index size mismatch: field=%d read=%d", n, consumed)
	}
	return nil
}
