package pager

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// The WAL file is a 32-byte header followed by frames, each a 24-byte frame
// header and one page. Every integer field is big-endian. The checksums are a
// running sum over 32-bit words whose byte order the header's magic chooses:
// the header checksum covers its first 24 bytes, and each frame's continues
// from the previous frame (the header for frame 1) over the first 8 bytes of
// the frame header and the page. A frame counts only if its salts equal the
// header's and its checksum matches; a transaction counts only once its commit
// frame (commit field != 0) does.

const (
	// WALHeaderSize is the size of the header at the start of a WAL file.
	WALHeaderSize = 32
	// WALFrameHeaderSize is the size of the header before each page in a WAL.
	WALFrameHeaderSize = 24
)

const (
	walMagicLE = 0x377f0682 // checksums over little-endian words
	walMagicBE = 0x377f0683 // checksums over big-endian words
	walVersion = 3007000
)

// ErrInvalidWAL is returned (wrapped) by ParseWALHeader when the bytes are not
// a WAL header that SQLite's recovery would accept.
var ErrInvalidWAL = errors.New("invalid WAL header")

// WALHeader is the 32-byte header of a WAL file. A new one is written at each
// WAL restart (after a complete checkpoint) with CheckpointSeq incremented and
// new salts; frames carry the salts of the header they belong to.
type WALHeader struct {
	Magic         uint32
	Version       uint32
	PageSize      uint32
	CheckpointSeq uint32
	Salt1, Salt2  uint32
	Checksum1     uint32
	Checksum2     uint32
}

// ParseWALHeader decodes and validates the WAL header at the start of b, which
// must hold at least WALHeaderSize bytes: magic 0x377f0682 or 0x377f0683,
// version 3007000, a page size that is a power of two from 512 to 65536, and a
// header checksum that matches its first 24 bytes. On failure the error wraps
// ErrInvalidWAL.
func ParseWALHeader(b []byte) (WALHeader, error) {
	if len(b) < WALHeaderSize {
		return WALHeader{}, fmt.Errorf("parse WAL header: %d bytes, need %d: %w", len(b), WALHeaderSize, ErrInvalidWAL)
	}
	be := binary.BigEndian
	h := WALHeader{
		Magic:         be.Uint32(b[0:]),
		Version:       be.Uint32(b[4:]),
		PageSize:      be.Uint32(b[8:]),
		CheckpointSeq: be.Uint32(b[12:]),
		Salt1:         be.Uint32(b[16:]),
		Salt2:         be.Uint32(b[20:]),
		Checksum1:     be.Uint32(b[24:]),
		Checksum2:     be.Uint32(b[28:]),
	}
	if h.Magic != walMagicLE && h.Magic != walMagicBE {
		return WALHeader{}, fmt.Errorf("parse WAL header: bad magic %#08x: %w", h.Magic, ErrInvalidWAL)
	}
	if h.Version != walVersion {
		return WALHeader{}, fmt.Errorf("parse WAL header: version %d, want %d: %w", h.Version, walVersion, ErrInvalidWAL)
	}
	if !isValidPageSize(h.PageSize) {
		return WALHeader{}, fmt.Errorf("parse WAL header: page size %d: %w", h.PageSize, ErrInvalidWAL)
	}
	s1, s2 := WALChecksum(h.BigEndian(), 0, 0, b[:24])
	if s1 != h.Checksum1 || s2 != h.Checksum2 {
		return WALHeader{}, fmt.Errorf("parse WAL header: checksum %08x:%08x, computed %08x:%08x: %w",
			h.Checksum1, h.Checksum2, s1, s2, ErrInvalidWAL)
	}
	return h, nil
}

// BigEndian reports whether the WAL's checksums sum big-endian words
// (magic&1 == 1); otherwise they sum little-endian words. SQLite picks the
// writing host's byte order, so WALs written on x86 and ARM are little-endian.
func (h WALHeader) BigEndian() bool { return h.Magic&1 == 1 }

// WALFrameHeader is the 24-byte header of one WAL frame. Commit is the
// database size in pages after the transaction for a commit frame, else 0.
type WALFrameHeader struct {
	Pgno, Commit, Salt1, Salt2, Checksum1, Checksum2 uint32
}

// ParseWALFrameHeader decodes the frame header at the start of b, which must
// hold at least WALFrameHeaderSize bytes (it panics otherwise). It validates
// nothing: salts and checksums are checked by ScanWAL.
func ParseWALFrameHeader(b []byte) WALFrameHeader {
	_ = b[WALFrameHeaderSize-1]
	be := binary.BigEndian
	return WALFrameHeader{
		Pgno:      be.Uint32(b[0:]),
		Commit:    be.Uint32(b[4:]),
		Salt1:     be.Uint32(b[8:]),
		Salt2:     be.Uint32(b[12:]),
		Checksum1: be.Uint32(b[16:]),
		Checksum2: be.Uint32(b[20:]),
	}
}

// WALChecksum continues SQLite's WAL checksum (s1, s2) over b (len multiple
// of 8), native or big-endian words per bigEndian. For each pair of words
// x0, x1 it computes s1 += x0 + s2; s2 += x1 + s1. Trailing bytes past the
// last multiple of 8 are ignored. Start from (0, 0) for a WAL header.
func WALChecksum(bigEndian bool, s1, s2 uint32, b []byte) (uint32, uint32) {
	b = b[:len(b)&^7]
	if bigEndian {
		for ; len(b) >= 8; b = b[8:] {
			s1 += binary.BigEndian.Uint32(b) + s2
			s2 += binary.BigEndian.Uint32(b[4:]) + s1
		}
		return s1, s2
	}
	for ; len(b) >= 8; b = b[8:] {
		s1 += binary.LittleEndian.Uint32(b) + s2
		s2 += binary.LittleEndian.Uint32(b[4:]) + s1
	}
	return s1, s2
}

// WALFrameOffset is the file offset of frame n (1-based): 32 + (n-1)*(pageSize+24).
func WALFrameOffset(pageSize uint32, n int) int64 {
	return WALHeaderSize + int64(n-1)*(int64(pageSize)+WALFrameHeaderSize)
}

// WALFrame is one valid frame found by a scan. Its page data starts at
// Offset+WALFrameHeaderSize; (Checksum1, Checksum2) is the running checksum
// after it, which the next frame continues.
type WALFrame struct {
	N                    int   // frame number, 1-based, counted from the header in force
	Offset               int64 // file offset of the frame header
	Pgno, Commit         uint32
	Checksum1, Checksum2 uint32
}

// WALScan is what SQLite's own WAL recovery would accept.
type WALScan struct {
	Header WALHeader
	// Valid is false when the file is shorter than a header or the header is
	// invalid (then nothing is committed, Header is zero and End is 0). For
	// ScanWALFrom it is also false when the file ends before the starting
	// offset: the WAL was truncated or restarted since that position.
	Valid bool
	// Frames are the valid frames up to and including the LAST commit frame
	// (frames after it are dropped), in file order.
	Frames []WALFrame
	// End is the offset just past the last committed frame (32, or the
	// starting offset for ScanWALFrom, if none; 0 if !Valid).
	End int64
	// Checksum1, Checksum2 are the running checksum at End: the header
	// checksum (or the starting checksum for ScanWALFrom) if no frame.
	Checksum1, Checksum2 uint32
}

// Commits returns the number of commit frames in the scan.
func (s *WALScan) Commits() int {
	n := 0
	for _, f := range s.Frames {
		if f.Commit != 0 {
			n++
		}
	}
	return n
}

// ScanWAL reads r (size bytes) as SQLite's WAL recovery does: header, then
// frames in order while salts equal the header's and the cumulative checksum
// (over the first 8 bytes of each frame header and its page data) matches the
// frame's; stops at the first bad or short frame, or one with page number 0;
// keeps frames only through the last commit frame (commit field != 0).
// It reads r in large chunks. Invalid content is reported through the scan;
// the error is only for I/O failures. A file found shorter than size is
// scanned as far as it goes.
func ScanWAL(r io.ReaderAt, size int64) (*WALScan, error) {
	cr := newChunkReader(r, size)
	b, ok, err := cr.at(0, WALHeaderSize)
	if err != nil {
		return nil, fmt.Errorf("scan WAL header: %w", err)
	}
	if !ok {
		return &WALScan{}, nil
	}
	hdr, err := ParseWALHeader(b)
	if err != nil {
		return &WALScan{}, nil
	}
	s := &WALScan{Header: hdr, Valid: true}
	if err := scanFrames(cr, s, WALHeaderSize, hdr.Checksum1, hdr.Checksum2); err != nil {
		return nil, fmt.Errorf("scan WAL: %w", err)
	}
	return s, nil
}

// ScanWALFrom continues a scan from a known committed position: hdr is the
// WAL header in force, off the offset of the next frame, (s1,s2) the running
// checksum at off. Same rules as ScanWAL; frame numbers continue from off.
// Used to find commits appended after a known point. It does not reread the
// header at offset 0: a caller must itself notice a WAL restart. An error is
// returned for I/O failures and for arguments that cannot describe a position
// (hdr's page size invalid, off not a frame boundary).
func ScanWALFrom(r io.ReaderAt, size int64, hdr WALHeader, off int64, s1, s2 uint32) (*WALScan, error) {
	if !isValidPageSize(hdr.PageSize) {
		return nil, fmt.Errorf("scan WAL from %d: page size %d: %w", off, hdr.PageSize, ErrInvalidWAL)
	}
	fsz := int64(hdr.PageSize) + WALFrameHeaderSize
	if off < WALHeaderSize || (off-WALHeaderSize)%fsz != 0 {
		return nil, fmt.Errorf("scan WAL from %d: not a frame boundary for page size %d", off, hdr.PageSize)
	}
	if off > size {
		return &WALScan{}, nil
	}
	s := &WALScan{Header: hdr, Valid: true}
	if err := scanFrames(newChunkReader(r, size), s, off, s1, s2); err != nil {
		return nil, fmt.Errorf("scan WAL from %d: %w", off, err)
	}
	return s, nil
}

// scanFrames fills s.Frames, s.End and s.Checksum* from the frames starting
// at off, whose running checksum before them is (s1, s2).
func scanFrames(cr *chunkReader, s *WALScan, off int64, s1, s2 uint32) error {
	hdr := s.Header
	fsz := int(hdr.PageSize) + WALFrameHeaderSize
	bigEndian := hdr.BigEndian()
	n := int((off-WALHeaderSize)/int64(fsz)) + 1
	s.End, s.Checksum1, s.Checksum2 = off, s1, s2
	committed := 0
	for ; ; n++ {
		b, ok, err := cr.at(off, fsz)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		fh := ParseWALFrameHeader(b)
		if fh.Pgno == 0 || fh.Salt1 != hdr.Salt1 || fh.Salt2 != hdr.Salt2 {
			break
		}
		s1, s2 = WALChecksum(bigEndian, s1, s2, b[:8])
		s1, s2 = WALChecksum(bigEndian, s1, s2, b[WALFrameHeaderSize:])
		if s1 != fh.Checksum1 || s2 != fh.Checksum2 {
			break
		}
		s.Frames = append(s.Frames, WALFrame{
			N: n, Offset: off, Pgno: fh.Pgno, Commit: fh.Commit, Checksum1: s1, Checksum2: s2,
		})
		off += int64(fsz)
		if fh.Commit != 0 {
			committed = len(s.Frames)
			s.End, s.Checksum1, s.Checksum2 = off, s1, s2
		}
	}
	s.Frames = slices.Clip(s.Frames[:committed])
	return nil
}

// scanChunkSize is how much a scan reads per ReadAt call.
const scanChunkSize = 1 << 20

// chunkReader serves sequential reads of byte ranges from an io.ReaderAt
// through one buffer filled a chunk at a time, so that scanning a file costs
// one ReadAt per chunk rather than one per frame or record. It is shared by
// the WAL and journal scans.
type chunkReader struct {
	r    io.ReaderAt
	size int64  // bytes readable; lowered if the file turns out shorter
	buf  []byte // allocated on first use
	off  int64  // file offset of buf[0]
	n    int    // valid bytes in buf
}

func newChunkReader(r io.ReaderAt, size int64) *chunkReader {
	return &chunkReader{r: r, size: max(size, 0)}
}

// at returns the n bytes at file offset off, valid until the next call. ok is
// false when they extend past the end of the file; err is an I/O failure.
func (c *chunkReader) at(off int64, n int) (b []byte, ok bool, err error) {
	if off < 0 || n < 0 || off > c.size || int64(n) > c.size-off {
		return nil, false, nil
	}
	end := off + int64(n)
	if off >= c.off && end <= c.off+int64(c.n) {
		i := int(off - c.off)
		return c.buf[i : i+n], true, nil
	}
	if len(c.buf) < n {
		c.buf = make([]byte, max(n, int(min(scanChunkSize, c.size))))
		c.n = 0
	}
	keep := 0 // bytes already buffered at off, moved to the front
	if off >= c.off && off < c.off+int64(c.n) {
		keep = copy(c.buf, c.buf[off-c.off:c.n])
	}
	want := int(min(int64(len(c.buf)), c.size-off))
	got, err := c.r.ReadAt(c.buf[keep:want], off+int64(keep))
	c.off, c.n = off, keep+got
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, false, fmt.Errorf("read %d bytes at %d: %w", want-keep, off+int64(keep), err)
	}
	if c.n < want {
		c.size = off + int64(c.n) // the file is shorter than we were told
	}
	if c.n < n {
		return nil, false, nil
	}
	return c.buf[:n], true, nil
}
