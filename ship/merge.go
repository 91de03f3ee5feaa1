package ship

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/pierrec/lz4/v4"
	"github.com/superfly/ltx"

	"github.com/sqlfs/sqlfs/pager/crc64iso"
)

// Merging is how the uploader catches up: when a database's backlog passes a
// bound, or the PUT rate would pass its cap, the commits waiting for the
// replica go up as one level-0 LTX file covering min..max instead of one file
// each. The merged file holds the newest version of every page any of them
// wrote, the pre-apply checksum of the first and the post-apply checksum of
// the last, so the checksum chain of the replica stays whole; the TXIDs
// strictly inside the range are no longer restorable from the replica (they
// still are from the local store).
//
// A merge runs on the commit path's machine while commits arrive as fast as
// they can, so it is done without re-encoding: every input is verified as
// ltx.Decoder verifies it (each page decompressed once and checksummed with
// crc64iso), and the merged file is made of the newest compressed frame of
// each page, copied as it is, with the file checksum combined from the
// pages' checksums. The result is byte for byte what compactLTX (decode,
// ltx.Compactor, re-encode) makes of the same files, and it is checked the
// same way (checkWindow before, checkMerged after).

// Limits of one merged file: a backlog larger than this goes up as several.
const (
	mergeMaxFiles = 20000
	mergeMaxBytes = 64 << 20
)

// mergeLocal reads the stored commits minTXID..maxTXID of db, stopping early
// once mergeMaxBytes are read, and merges them into one LTX file. It returns
// the file and the last TXID it covers (maxTXID unless it stopped early).
// scratch is memory to read into (see Store.ReadCommits); the file does not
// alias it.
func mergeLocal(ctx context.Context, store *Store, db string, minTXID, maxTXID ltx.TXID, scratch *[]byte) ([]byte, ltx.TXID, error) {
	inputs, sealed, err := store.ReadCommits(db, minTXID, maxTXID, mergeMaxBytes, scratch)
	if err != nil {
		return nil, 0, err
	}
	hi := minTXID + ltx.TXID(len(inputs)) - 1
	out, err := mergeFrames(ctx, inputs, sealed)
	if errors.Is(err, errors.ErrUnsupported) {
		out, _, err = compactLTX(ctx, inputs)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("merge %s: %w", LTXPath(db, 0, minTXID, hi), err)
	}
	return out, hi, nil
}

// mergeLTX merges LTX files whose TXIDs chain (oldest first) into one: the
// uploader's backlog merges and the leveler's compactions and snapshots
// alike. It copies compressed frames (mergeFrames) and falls back to
// decoding and re-encoding (compactLTX) for pages in the older LZ4-frame
// format; both verify every input and the result, and refuse a window that
// would not merge exactly with an *unsafeWindowError.
func mergeLTX(ctx context.Context, inputs [][]byte) ([]byte, error) {
	out, err := mergeFrames(ctx, inputs, nil)
	if errors.Is(err, errors.ErrUnsupported) {
		out, _, err = compactLTX(ctx, inputs)
	}
	return out, err
}

// ltxFrame is one page of a parsed LTX file.
type ltxFrame struct {
	pgno    uint32
	block   []byte // the LZ4 block, a slice of the file's bytes
	crc     uint64 // CRC-64 ISO of the uncompressed page, once checked
	checked bool   // the block was decompressed to a whole page and crc taken
}

// framePrefixSize is a page header and the size of the LZ4 block after it.
const framePrefixSize = ltx.PageHeaderSize + 4

// mergeFrames merges LTX files whose TXIDs chain (oldest first) into one,
// as compactLTX does, from the inputs' compressed frames. A file with pages
// in the older LZ4-frame format is errors.ErrUnsupported.
//
// Every input is verified as ltx.Decoder verifies it, except an input whose
// sealed entry is true (sealed may be nil): its bytes were just checked
// against the CRC-64 taken over them when they were stored (a capture log
// record, Store.ReadCommits), so they are the bytes the capture encoded, and
// only its structure is checked here (header, page headers and bounds, page
// index, trailer) — the pages that go into the merged file are still each
// decompressed to a whole page and checksummed, and the merged file is
// decoded completely (checkMerged); a page a later input writes again is
// not decompressed. At full speed each commit rewrites the same few pages,
// so that is most of them. A sealed snapshot (TXID 1) is verified whole all
// the same: its post-apply checksum covers every page.
func mergeFrames(ctx context.Context, inputs [][]byte, sealed []bool) ([]byte, error) {
	if len(inputs) == 0 {
		return nil, errors.New("nothing to merge")
	}
	var (
		sums   = make([]ltxSummary, len(inputs))
		newest = map[uint32]ltxFrame{}
		pgnos  []uint32 // every input's page numbers, one after the other
		sc     ltxScanner
	)
	for i, data := range inputs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		start := len(pgnos)
		check := sealed == nil || !sealed[i] || isSnapshotFile(data)
		hdr, tr, err := sc.scan(data, check, func(f ltxFrame) {
			newest[f.pgno] = f
			pgnos = append(pgnos, f.pgno)
		})
		if errors.Is(err, errors.ErrUnsupported) {
			return nil, err
		} else if err != nil {
			return nil, fmt.Errorf("input %d: %w", i, err)
		}
		sums[i] = ltxSummary{hdr: hdr, trailer: tr, pgnos: pgnos[start:len(pgnos):len(pgnos)]}
		if i == 0 {
			continue
		}
		prev := sums[i-1]
		switch {
		case hdr.PageSize != prev.hdr.PageSize:
			return nil, fmt.Errorf("txid %s has %d-byte pages, txid %s %d-byte pages", hdr.MinTXID, hdr.PageSize, prev.hdr.MaxTXID, prev.hdr.PageSize)
		case hdr.MinTXID != prev.hdr.MaxTXID+1:
			return nil, fmt.Errorf("txid %s does not follow txid %s", hdr.MinTXID, prev.hdr.MaxTXID)
		case hdr.PreApplyChecksum != prev.trailer.PostApplyChecksum:
			return nil, fmt.Errorf("txid %s does not continue txid %s: checksum chain broken", hdr.MinTXID, prev.hdr.MaxTXID)
		}
	}
	if err := checkWindow(sums); err != nil {
		return nil, &unsafeWindowError{err: err, safe: safePrefix(sums)}
	}
	first, last := sums[0], sums[len(sums)-1]
	hdr := ltx.Header{
		Version:          ltx.Version,
		PageSize:         first.hdr.PageSize,
		Commit:           last.hdr.Commit,
		MinTXID:          first.hdr.MinTXID,
		MaxTXID:          last.hdr.MaxTXID,
		Timestamp:        last.hdr.Timestamp,
		PreApplyChecksum: first.hdr.PreApplyChecksum,
	}
	keep := make([]uint32, 0, len(newest))
	size := ltx.HeaderSize + ltx.PageHeaderSize + 16 + ltx.TrailerSize
	for pgno, f := range newest {
		if pgno <= hdr.Commit { // pages past the final size are gone
			keep = append(keep, pgno)
			size += framePrefixSize + len(f.block) + 3*binary.MaxVarintLen32
		}
	}
	slices.Sort(keep)
	for _, pgno := range keep {
		if f := newest[pgno]; !f.checked {
			c, err := sc.pageCRC(f.block)
			if err != nil {
				return nil, fmt.Errorf("page %d: %w", pgno, err)
			}
			f.crc, f.checked = c, true
			newest[pgno] = f
		}
	}
	if hdr.IsSnapshot() {
		// A snapshot holds every page: the Encoder refuses one with a gap.
		lock := ltx.LockPgno(hdr.PageSize)
		next := uint32(1)
		for _, p := range keep {
			if next == lock {
				next++
			}
			if p != next {
				return nil, fmt.Errorf("merged snapshot of txids %s through %s lacks page %d", hdr.MinTXID, hdr.MaxTXID, next)
			}
			next++
		}
	}
	out, err := writeFrames(make([]byte, 0, size), hdr, keep, newest, last.trailer.PostApplyChecksum, sc.shift)
	if err != nil {
		return nil, err
	}
	if err := checkMerged(out, first, last); err != nil {
		return nil, err
	}
	return out, nil
}

// writeFrames appends to b an LTX file with header hdr, the frames of pages
// keep (ascending) and post-apply checksum post, laid out as ltx.Encoder
// lays it out.
func writeFrames(b []byte, hdr ltx.Header, keep []uint32, frames map[uint32]ltxFrame, post ltx.Checksum, shift *crc64iso.Shift) ([]byte, error) {
	if err := hdr.Validate(); err != nil {
		return nil, err
	}
	hb, _ := hdr.MarshalBinary()
	b = append(b, hb...)
	crc := crc64iso.Checksum(hb)
	type entry struct {
		pgno         uint32
		offset, size int
	}
	index := make([]entry, 0, len(keep))
	for _, pgno := range keep {
		f := frames[pgno]
		off := len(b)
		b = binary.BigEndian.AppendUint32(b, pgno)
		b = binary.BigEndian.AppendUint16(b, ltx.PageHeaderFlagSize)
		b = binary.BigEndian.AppendUint32(b, uint32(len(f.block)))
		crc = shift.Combine(crc64iso.Update(crc, b[off:]), f.crc) // the checksum covers the uncompressed page
		b = append(b, f.block...)
		index = append(index, entry{pgno, off, len(b) - off})
	}
	off := len(b)
	b = append(b, make([]byte, ltx.PageHeaderSize)...) // end of the pages
	start := len(b)
	for _, e := range index {
		b = binary.AppendUvarint(b, uint64(e.pgno))
		b = binary.AppendUvarint(b, uint64(e.offset))
		b = binary.AppendUvarint(b, uint64(e.size))
	}
	b = binary.AppendUvarint(b, 0)
	b = binary.BigEndian.AppendUint64(b, uint64(len(b)-start))
	b = binary.BigEndian.AppendUint64(b, uint64(post))
	crc = crc64iso.Update(crc, b[off:])
	tr := ltx.Trailer{PostApplyChecksum: post, FileChecksum: ltx.ChecksumFlag | ltx.Checksum(crc)}
	if err := tr.Validate(hdr); err != nil {
		return nil, err
	}
	return binary.BigEndian.AppendUint64(b, uint64(tr.FileChecksum)), nil
}

// pageShifts holds a crc64iso.Shift for each page size seen: making one
// costs more than merging a hundred small commits.
var pageShifts sync.Map // uint32 -> *crc64iso.Shift

func pageShift(pageSize uint32) *crc64iso.Shift {
	if s, ok := pageShifts.Load(pageSize); ok {
		return s.(*crc64iso.Shift)
	}
	s, _ := pageShifts.LoadOrStore(pageSize, crc64iso.NewShift(int64(pageSize)))
	return s.(*crc64iso.Shift)
}

// ltxScanner verifies LTX files held in memory; it keeps its page buffer and
// checksum tables between files.
type ltxScanner struct {
	page  []byte
	shift *crc64iso.Shift // combines a CRC with that of one page
}

// scan verifies one LTX file as ltx.Decoder does — its header, every page
// header, every page decompressed to exactly a page, the page index against
// the pages, the file checksum, and for a snapshot its post-apply checksum —
// and calls frame for each page in file order. A page in the older LZ4-frame
// format is errors.ErrUnsupported. With check false it checks the structure
// only (no page is decompressed, so neither checksum is compared) and the
// frames it passes are not checked: only for bytes verified otherwise
// (mergeFrames' sealed inputs).
func (s *ltxScanner) scan(data []byte, check bool, frame func(ltxFrame)) (ltx.Header, ltx.Trailer, error) {
	var hdr ltx.Header
	var tr ltx.Trailer
	if len(data) < ltx.HeaderSize+ltx.PageHeaderSize+ltx.TrailerSize {
		return hdr, tr, fmt.Errorf("ltx file of %d bytes is too short", len(data))
	}
	if err := hdr.UnmarshalBinary(data); err != nil {
		return hdr, tr, err
	} else if err := hdr.Validate(); err != nil {
		return hdr, tr, err
	}
	ps := int(hdr.PageSize)
	if len(s.page) != ps {
		s.page = make([]byte, ps)
		s.shift = pageShift(hdr.PageSize)
	}
	lock := ltx.LockPgno(hdr.PageSize)
	snapshot := hdr.IsSnapshot() && !hdr.NoChecksum()
	crc := crc64iso.Update(0, data[:ltx.HeaderSize])
	var sum uint64 // XOR of the page checksums, for a snapshot
	type entry struct {
		pgno         uint32
		offset, size int
	}
	var index [8]entry
	pages := index[:0]
	off := ltx.HeaderSize
	end := len(data) - ltx.TrailerSize
	for prev := uint32(0); ; {
		if end-off < ltx.PageHeaderSize {
			return hdr, tr, errors.New("ltx file ends inside its pages")
		}
		pgno := binary.BigEndian.Uint32(data[off:])
		flags := binary.BigEndian.Uint16(data[off+4:])
		if pgno == 0 && flags == 0 {
			crc = crc64iso.Update(crc, data[off:off+ltx.PageHeaderSize])
			off += ltx.PageHeaderSize
			break
		}
		switch {
		case flags != ltx.PageHeaderFlagSize:
			if flags == 0 && pgno != 0 {
				return hdr, tr, errors.ErrUnsupported
			}
			return hdr, tr, fmt.Errorf("page %d: invalid page header flags 0x%04x", pgno, flags)
		case pgno == 0 || pgno <= prev || pgno > hdr.Commit || pgno == lock:
			return hdr, tr, fmt.Errorf("page %d out of order or range (previous %d, commit %d)", pgno, prev, hdr.Commit)
		case end-off < framePrefixSize:
			return hdr, tr, errors.New("ltx file ends inside its pages")
		}
		n := int(binary.BigEndian.Uint32(data[off+ltx.PageHeaderSize:]))
		if n > end-off-framePrefixSize {
			return hdr, tr, fmt.Errorf("page %d: block of %d bytes runs past the end of the file", pgno, n)
		}
		block := data[off+framePrefixSize : off+framePrefixSize+n]
		f := ltxFrame{pgno: pgno, block: block}
		if check {
			c, err := s.pageCRC(block)
			if err != nil {
				return hdr, tr, fmt.Errorf("page %d: %w", pgno, err)
			}
			f.crc, f.checked = c, true
			crc = s.shift.Combine(crc64iso.Update(crc, data[off:off+framePrefixSize]), c)
			if snapshot {
				// ltx.ChecksumPage: the CRC of the big-endian pgno, then the page.
				sum ^= s.shift.Combine(crc64iso.Update(0, data[off:off+4]), c)
			}
		}
		pages = append(pages, entry{pgno, off, framePrefixSize + n})
		frame(f)
		off += framePrefixSize + n
		prev = pgno
	}
	// The page index must name exactly the pages read, where they are.
	start := off
	for i := 0; ; i++ {
		var v [3]uint64
		for j := range v {
			x, k := binary.Uvarint(data[off:end])
			if k <= 0 {
				return hdr, tr, errors.New("ltx page index is damaged")
			}
			v[j], off = x, off+k
			if j == 0 && x == 0 {
				break
			}
		}
		if v[0] == 0 {
			if i != len(pages) {
				return hdr, tr, fmt.Errorf("ltx page index has %d entries for %d pages", i, len(pages))
			}
			break
		}
		if i >= len(pages) || v[0] != uint64(pages[i].pgno) || v[1] != uint64(pages[i].offset) || v[2] != uint64(pages[i].size) {
			return hdr, tr, fmt.Errorf("ltx page index entry %d does not match the pages", i+1)
		}
	}
	if end-off != 8 || binary.BigEndian.Uint64(data[off:]) != uint64(off-start) {
		return hdr, tr, errors.New("ltx page index size does not match")
	}
	crc = crc64iso.Update(crc, data[start:end+ltx.TrailerChecksumOffset])
	if err := tr.UnmarshalBinary(data[end:]); err != nil {
		return hdr, tr, err
	}
	if !check {
		return hdr, tr, tr.Validate(hdr)
	}
	if ltx.ChecksumFlag|ltx.Checksum(crc) != tr.FileChecksum {
		return hdr, tr, ltx.ErrChecksumMismatch
	}
	if snapshot && ltx.ChecksumFlag|ltx.Checksum(sum) != tr.PostApplyChecksum {
		return hdr, tr, fmt.Errorf("post-apply checksum in trailer (%s) does not match calculated checksum (%s)", tr.PostApplyChecksum, ltx.ChecksumFlag|ltx.Checksum(sum))
	}
	return hdr, tr, nil
}

// pageCRC decompresses one page's LZ4 block, which must give exactly a
// page, and returns the page's CRC-64 ISO.
func (s *ltxScanner) pageCRC(block []byte) (uint64, error) {
	m, err := lz4.UncompressBlock(block, s.page)
	if err == nil && m != len(s.page) {
		err = fmt.Errorf("%d bytes, not %d", m, len(s.page))
	}
	if err != nil {
		return 0, fmt.Errorf("decompress block: %w", err)
	}
	return crc64iso.Checksum(s.page), nil
}

// isSnapshotFile reports whether an LTX file's header says it holds a whole
// database (TXID 1 on); a file too short for a header is not.
func isSnapshotFile(data []byte) bool {
	var hdr ltx.Header
	return hdr.UnmarshalBinary(data) == nil && hdr.IsSnapshot()
}
