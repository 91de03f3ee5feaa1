package restore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
	"github.com/sqlfs/sqlfs/pager/crc64iso"
	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// An LTX v3 file is laid out as
//
//	header (100 bytes) | page frames | end-of-pages marker (6 zero bytes)
//	| page index | index size (8 bytes) | trailer (16 bytes)
//
// where each page index record is three uvarints (pgno, frame offset, frame
// size) in ascending pgno order and a zero pgno ends the records. So the
// index of a file can be read from its tail alone, and one page from one
// frame, each with a ranged read. Frames lie back to back from the end of
// the header to the end-of-pages marker (the encoder writes them so, and a
// sequential decoder could read nothing else), which readFileIndex checks.
//
// The file checksum is the CRC-64 ISO of the header, then per frame its
// page header, its 4-byte size (block frames) and the page uncompressed,
// then the end-of-pages marker, the index, the index size and the
// post-apply checksum: so it can be computed from the parts apart and
// combined in file order (see verify.go).

// tailRead is how much of a file's end the first ranged read takes: the
// trailer, the index size and, for all but large files, the whole index.
// A file no larger than this is read whole, in the same one request, and
// then its file checksum is verified too.
const tailRead = 64 << 10

// endOfPagesSize is the size of the zero page header that ends the frames.
const endOfPagesSize = ltx.PageHeaderSize

// fileIndex is what reading pages of one LTX file needs: its header and
// trailer, verified for consistency with each other and with its name, and
// where each page's frame lies. Only valid when readFileIndex returns nil.
type fileIndex struct {
	info     *ltx.FileInfo
	path     string // relative to the replica, for messages
	hdr      ltx.Header
	trailer  ltx.Trailer
	verified bool   // the whole file was read at open and its file checksum matched
	whole    []byte // then, the file's bytes: its pages are read from here

	pgnos []uint32 // ascending
	offs  []int64  // frame offset of pgnos[i]
	sizes []uint32 // frame size of pgnos[i]

	// What verifying the file checksum later needs, when not verified at
	// open: where each frame starts (frames[k] is offs[k], kept after
	// pgnos and sizes are dropped), where the last one ends, and the CRCs
	// of the bytes hashed before the first frame and after the last.
	frames    []int64
	framesEnd int64
	headSum   uint64 // CRC of the header
	tailSum   uint64 // CRC of end-of-pages marker, index, index size, post-apply checksum
	tailLen   int64
	refs      int      // pages of the database read from this file
	check     coverage // the frames hashed so far, and the verdict

	fetched  int64  // bytes read from the replica to build this index
	cacheKey string // the file in the disk cache, when there is one
}

// readFileIndex reads the header, page index and trailer of one file with
// at most three ranged reads (two of them at once) and checks what can be checked without the
// page frames: header and trailer valid and consistent, TXIDs as named, and
// every index record inside the page block, ascending and not overlapping.
// Errors name the file and match ErrCorrupt, except failures to read.
func readFileIndex(ctx context.Context, r ship.Replica, db string, fi *ltx.FileInfo) (*fileIndex, error) {
	f := &fileIndex{info: fi, path: ship.LTXPath(db, fi.Level, fi.MinTXID, fi.MaxTXID)}
	size := fi.Size
	const minSize = ltx.HeaderSize + endOfPagesSize + 8 + ltx.TrailerSize
	if size < minSize {
		return nil, f.corrupt(fmt.Errorf("%d bytes is too short for an LTX file", size))
	}
	tailN := min(size, tailRead)
	tailOff := size - tailN
	// A file larger than the tail read needs its header too: read at the
	// same time, it costs no round trip of its own.
	var head []byte
	var headErr error
	headDone := make(chan struct{})
	if tailOff == 0 {
		close(headDone)
	} else {
		go func() {
			defer close(headDone)
			head, headErr = f.read(ctx, r, db, 0, ltx.HeaderSize)
		}()
	}
	tail, err := f.read(ctx, r, db, tailOff, tailN)
	<-headDone
	if err == nil {
		err = headErr
	}
	if err != nil {
		return nil, err
	}
	f.fetched = int64(len(head) + len(tail))
	if err := f.trailer.UnmarshalBinary(tail[tailN-ltx.TrailerSize:]); err != nil {
		return nil, f.corrupt(fmt.Errorf("trailer: %w", err))
	}
	indexSize := int64(binary.BigEndian.Uint64(tail[tailN-ltx.TrailerSize-8:]))
	indexEnd := size - ltx.TrailerSize - 8
	if indexSize < 1 || indexSize > indexEnd-ltx.HeaderSize-endOfPagesSize {
		return nil, f.corrupt(fmt.Errorf("page index size %d does not fit in %d bytes", indexSize, size))
	}
	indexStart := indexEnd - indexSize

	// The index with the end-of-pages marker before it.
	markerStart := indexStart - endOfPagesSize
	var index []byte
	if tailOff == 0 {
		head, index = tail[:ltx.HeaderSize], tail[markerStart:indexEnd]
	} else if markerStart >= tailOff {
		index = tail[markerStart-tailOff : indexEnd-tailOff]
	} else {
		// The index starts before the tail read: read what it lacks.
		index = make([]byte, indexEnd-markerStart)
		more := index[:tailOff-markerStart]
		if err := f.readInto(ctx, r, db, more, markerStart); err != nil {
			return nil, err
		}
		f.fetched += int64(len(more))
		copy(index[len(more):], tail[:indexEnd-tailOff])
	}
	if !bytes.Equal(index[:endOfPagesSize], make([]byte, endOfPagesSize)) {
		return nil, f.corrupt(errors.New("no end-of-pages marker before the page index"))
	}
	f.headSum = crc64iso.Checksum(head)
	f.tailSum = crc64iso.Update(crc64iso.Checksum(index), tail[tailN-ltx.TrailerSize-8:tailN-ltx.TrailerSize+ltx.TrailerChecksumOffset])
	f.tailLen = int64(len(index)) + 8 + ltx.TrailerChecksumOffset
	f.framesEnd = markerStart
	index = index[endOfPagesSize:]
	if err := f.hdr.UnmarshalBinary(head); err != nil {
		return nil, f.corrupt(fmt.Errorf("header: %w", err))
	}
	if err := f.hdr.Validate(); err != nil {
		return nil, f.corrupt(fmt.Errorf("header: %w", err))
	}
	if f.hdr.MinTXID != fi.MinTXID || f.hdr.MaxTXID != fi.MaxTXID {
		return nil, f.corrupt(fmt.Errorf("header holds txids %s through %s", f.hdr.MinTXID, f.hdr.MaxTXID))
	}
	if err := f.trailer.Validate(f.hdr); err != nil {
		return nil, f.corrupt(fmt.Errorf("trailer: %w", err))
	}
	if err := f.parseIndex(index, f.framesEnd); err != nil {
		return nil, f.corrupt(fmt.Errorf("page index: %w", err))
	}
	if tailOff == 0 {
		// The whole file is here: verify it all, file checksum included.
		if err := f.verifyWhole(tail); err != nil {
			return nil, err
		}
		f.verified, f.whole = true, tail
	} else {
		f.frames = f.offs
	}
	return f, nil
}

// verifyWhole verifies a file read whole, whose header, index and trailer
// readFileIndex has checked: every frame decodes to one page of the page
// number the index gives it, the file checksum matches, and for a snapshot
// the post-apply checksum is that of its pages. That is what ltx.Decoder's
// Verify checks (FuzzReadFileIndex holds the two together), at a third of
// its cost: a historical mount verifies a thousand small files this way.
func (f *fileIndex) verifyWhole(file []byte) error {
	page := make([]byte, f.hdr.PageSize)
	lockPgno := ltx.LockPgno(f.hdr.PageSize)
	snapshot := f.hdr.IsSnapshot() && !f.hdr.NoChecksum()
	crc := f.headSum
	var sum uint64 // XOR of the page checksums, without their flag
	var pb [4]byte
	for k, pgno := range f.pgnos {
		frame := file[f.offs[k] : f.offs[k]+int64(f.sizes[k])]
		hn, err := f.decodeFrame(frame, pgno, page)
		if err != nil {
			return err
		}
		crc = crc64iso.Update(crc64iso.Update(crc, frame[:hn]), page)
		if snapshot && pgno != lockPgno {
			binary.BigEndian.PutUint32(pb[:], pgno)
			sum ^= crc64iso.Update(crc64iso.Checksum(pb[:]), page)
		}
	}
	if got := f.fileChecksum(crc); got != f.trailer.FileChecksum {
		return f.corrupt(fmt.Errorf("file checksum %s does not match %s in its trailer", got, f.trailer.FileChecksum))
	}
	if got := ltx.ChecksumFlag | ltx.Checksum(sum); snapshot && got != f.trailer.PostApplyChecksum {
		return f.corrupt(fmt.Errorf("snapshot checksum %s does not match post-apply checksum %s in its trailer", got, f.trailer.PostApplyChecksum))
	}
	return nil
}

// fileChecksum is the file checksum of f given crc, the CRC-64 of its
// header and page frames (as hashed: each frame's header, then its page).
func (f *fileIndex) fileChecksum(crc uint64) ltx.Checksum {
	return ltx.ChecksumFlag | ltx.Checksum(crc64iso.Combine(crc, f.tailSum, f.tailLen))
}

// read fetches n bytes of the file at off. It changes nothing in f, so two
// reads may run at once.
func (f *fileIndex) read(ctx context.Context, r ship.Replica, db string, off, n int64) ([]byte, error) {
	b := make([]byte, n)
	if err := f.readInto(ctx, r, db, b, off); err != nil {
		return nil, err
	}
	return b, nil
}

// readInto fills b with the file's bytes at off.
func (f *fileIndex) readInto(ctx context.Context, r ship.Replica, db string, b []byte, off int64) error {
	if err := ship.ReadLTXAt(ctx, r, db, f.info.Level, f.info.MinTXID, f.info.MaxTXID, b, off); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return f.corrupt(fmt.Errorf("shorter than the %d bytes listed", f.info.Size))
		}
		return fmt.Errorf("read %s: %w", f.path, err)
	}
	return nil
}

// parseIndex decodes the index records; the frames must lie back to back
// from the end of the header to framesEnd (where the end-of-pages marker
// starts). The slices are sized once: a snapshot's index holds a record per
// page of the database (262,144 for 1 GiB), and growing them by appending
// cost more than decoding them.
func (f *fileIndex) parseIndex(b []byte, framesEnd int64) error {
	// Every record takes at least 3 bytes, and a database of Commit pages
	// has no more records than that.
	n := min(len(b)/3, int(f.hdr.Commit))
	f.pgnos, f.offs, f.sizes = make([]uint32, 0, n), make([]int64, 0, n), make([]uint32, 0, n)
	next := int64(ltx.HeaderSize) // no frame may start before this
	var prev uint32
	pos := 0
	uvarint := func() (uint64, error) {
		v, k := binary.Uvarint(b[pos:])
		switch {
		case k == 0:
			return 0, io.ErrUnexpectedEOF
		case k < 0:
			return 0, errors.New("varint overflows a 64-bit integer")
		}
		pos += k
		return v, nil
	}
	for {
		pgno, err := uvarint()
		if err != nil {
			return fmt.Errorf("record %d: %w", len(f.pgnos)+1, err)
		}
		if pgno == 0 {
			break
		}
		off, err1 := uvarint()
		size, err2 := uvarint()
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("record %d: %w", len(f.pgnos)+1, err)
		}
		switch {
		case pgno <= uint64(prev) || pgno > uint64(f.hdr.Commit):
			return fmt.Errorf("page %d after page %d in a database of %d pages", pgno, prev, f.hdr.Commit)
		case size <= ltx.PageHeaderSize || size > uint64(framesEnd) || off > uint64(framesEnd)-size:
			return fmt.Errorf("page %d: frame of %d bytes at %d is outside the page block", pgno, size, off)
		case off != uint64(next):
			return fmt.Errorf("page %d: frame at %d, but the previous one ends at %d", pgno, off, next)
		}
		prev, next = uint32(pgno), int64(off+size)
		f.pgnos = append(f.pgnos, uint32(pgno))
		f.offs = append(f.offs, int64(off))
		f.sizes = append(f.sizes, uint32(size))
	}
	if rest := len(b) - pos; rest != 0 {
		return fmt.Errorf("%d bytes after the last record", rest)
	}
	if next != framesEnd {
		return fmt.Errorf("the frames end at %d, the end-of-pages marker is at %d", next, framesEnd)
	}
	return nil
}

func (f *fileIndex) corrupt(err error) error {
	return &kindError{kind: ErrCorrupt, cause: err, msg: fmt.Sprintf("%s: corrupt LTX file: %v", f.path, err)}
}

// decodeFrame decompresses the frame of page pgno into dst (one page) and
// returns how many of the frame's first bytes the file checksum hashes
// before the page. Pgno 0 takes whatever page the frame holds (a frame
// read only to be hashed).
func (f *fileIndex) decodeFrame(frame []byte, pgno uint32, dst []byte) (int, error) {
	var ph ltx.PageHeader
	if err := ph.UnmarshalBinary(frame); err != nil {
		return 0, f.corrupt(fmt.Errorf("page %d: %w", pgno, err))
	}
	if pgno == 0 {
		pgno = ph.Pgno
	}
	if ph.Flags&^ltx.PageHeaderFlagSize != 0 {
		return 0, f.corrupt(fmt.Errorf("page %d: page header flags %#04x", pgno, ph.Flags))
	}
	if ph.Pgno != pgno {
		return 0, f.corrupt(fmt.Errorf("the index places page %d where page %d is", pgno, ph.Pgno))
	}
	if ph.Flags&ltx.PageHeaderFlagSize == 0 {
		// Frames of the older LZ4-frame format.
		_, data, err := ltx.DecodePageData(frame)
		if err != nil || len(data) != len(dst) {
			return 0, f.corrupt(fmt.Errorf("page %d: %d bytes, %v", pgno, len(data), err))
		}
		copy(dst, data)
		return ltx.PageHeaderSize, nil
	}
	if len(frame) < ltx.PageHeaderSize+4 {
		return 0, f.corrupt(fmt.Errorf("page %d: frame of %d bytes", pgno, len(frame)))
	}
	n := binary.BigEndian.Uint32(frame[ltx.PageHeaderSize:])
	block := frame[ltx.PageHeaderSize+4:]
	if int64(n) != int64(len(block)) {
		return 0, f.corrupt(fmt.Errorf("page %d: block of %d bytes in a frame of %d", pgno, n, len(frame)))
	}
	m, err := lz4.UncompressBlock(block, dst)
	if err != nil || m != len(dst) {
		return 0, f.corrupt(fmt.Errorf("page %d: decompressed %d bytes of %d: %v", pgno, m, len(dst), err))
	}
	return ltx.PageHeaderSize + 4, nil
}
