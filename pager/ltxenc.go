package pager

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
	"github.com/superfly/ltx"

	"github.com/sqlfs/sqlfs/pager/crc64iso"
)

// ltxWriter encodes LTX files byte for byte as ltx.Encoder does (format v3:
// LZ4 block pages, varint page index, trailer with the file checksum), but is
// reused across commits: ltx.Encoder embeds a 64 KiB LZ4 hash table and so
// allocates and clears it for every file, which is most of the cost of a
// one-page commit. The tests check the output against ltx.Encoder and read it
// back with ltx.Decoder.
type ltxWriter struct {
	w     io.Writer
	crc   uint64 // CRC-64 ISO of the file so far
	n     int64
	hdr   ltx.Header
	prev  uint32
	state int // 0 idle, 1 pages, 2 failed

	comp  lz4.Compressor
	cbuf  []byte
	index []indexEntry
	tmp   []byte
}

type indexEntry struct {
	pgno         uint32
	offset, size int64
}

var errWriterState = errors.New("ltx writer used out of order")

// begin starts a file on w with header h.
func (e *ltxWriter) begin(w io.Writer, h ltx.Header) error {
	if err := h.Validate(); err != nil {
		return err
	}
	e.w, e.hdr, e.n, e.prev, e.index = w, h, 0, 0, e.index[:0]
	e.crc = 0
	if need := lz4.CompressBlockBound(int(h.PageSize)); len(e.cbuf) < need {
		e.cbuf = make([]byte, need)
	}
	b, _ := h.MarshalBinary()
	e.state = 1
	return e.write(b)
}

// page appends one page; page numbers must ascend.
func (e *ltxWriter) page(pgno uint32, data []byte) error {
	if e.state != 1 {
		return errWriterState
	}
	if pgno == 0 || pgno <= e.prev || pgno > e.hdr.Commit || pgno == ltx.LockPgno(e.hdr.PageSize) {
		return fmt.Errorf("ltx page %d out of order or range (previous %d, commit %d)", pgno, e.prev, e.hdr.Commit)
	}
	if uint32(len(data)) != e.hdr.PageSize {
		return fmt.Errorf("ltx page %d: %d bytes, want %d", pgno, len(data), e.hdr.PageSize)
	}
	n, err := e.comp.CompressBlock(data, e.cbuf)
	if err != nil || n == 0 {
		return e.failf("compress page %d: %v", pgno, err)
	}
	offset := e.n
	e.tmp = binary.BigEndian.AppendUint32(e.tmp[:0], pgno)
	e.tmp = binary.BigEndian.AppendUint16(e.tmp, ltx.PageHeaderFlagSize)
	e.tmp = binary.BigEndian.AppendUint32(e.tmp, uint32(n))
	if err := e.write(e.tmp); err != nil {
		return err
	}
	if _, err := e.w.Write(e.cbuf[:n]); err != nil {
		return e.failf("write page %d: %v", pgno, err)
	}
	e.crc = crc64iso.Update(e.crc, data) // the checksum covers the uncompressed page
	e.n += int64(n)
	e.prev = pgno
	e.index = append(e.index, indexEntry{pgno, offset, e.n - offset})
	return nil
}

// finish writes the end of the pages, the page index and the trailer.
func (e *ltxWriter) finish(post ltx.Checksum) error {
	if e.state != 1 {
		return errWriterState
	}
	e.tmp = append(e.tmp[:0], make([]byte, ltx.PageHeaderSize)...)
	if err := e.write(e.tmp); err != nil {
		return err
	}
	start := e.n
	b := e.tmp[:0]
	for _, x := range e.index {
		b = binary.AppendUvarint(b, uint64(x.pgno))
		b = binary.AppendUvarint(b, uint64(x.offset))
		b = binary.AppendUvarint(b, uint64(x.size))
		if len(b) > 32<<10 {
			if err := e.write(b); err != nil {
				return err
			}
			b = b[:0]
		}
	}
	b = binary.AppendUvarint(b, 0)
	if err := e.write(b); err != nil {
		return err
	}
	e.tmp = binary.BigEndian.AppendUint64(b[:0], uint64(e.n-start))
	if err := e.write(e.tmp); err != nil {
		return err
	}
	tr := ltx.Trailer{PostApplyChecksum: post}
	tb, _ := tr.MarshalBinary()
	e.crc = crc64iso.Update(e.crc, tb[:ltx.TrailerChecksumOffset])
	tr.FileChecksum = ltx.ChecksumFlag | ltx.Checksum(e.crc)
	if err := tr.Validate(e.hdr); err != nil {
		return e.failf("trailer: %v", err)
	}
	tb, _ = tr.MarshalBinary()
	if _, err := e.w.Write(tb); err != nil {
		return e.failf("write trailer: %v", err)
	}
	e.n += ltx.TrailerSize
	e.state = 0
	return nil
}

func (e *ltxWriter) write(b []byte) error {
	if _, err := e.w.Write(b); err != nil {
		return e.failf("write: %v", err)
	}
	e.crc = crc64iso.Update(e.crc, b)
	e.n += int64(len(b))
	return nil
}

func (e *ltxWriter) failf(format string, args ...any) error {
	e.state = 2
	return fmt.Errorf("encode ltx: "+format, args...)
}
