package pager

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func FuzzParseWALHeader(f *testing.F) {
	f.Add(walHeaderBytes(4096, false, 0, 1, 2))
	f.Add(walHeaderBytes(65536, true, 9, 0xffffffff, 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseWALHeader(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidWAL) {
				t.Fatalf("err %v does not wrap ErrInvalidWAL", err)
			}
			return
		}
		if !isValidPageSize(h.PageSize) || h.Version != walVersion {
			t.Fatalf("accepted %+v", h)
		}
		if !bytes.Equal(walHeaderBytes(h.PageSize, h.BigEndian(), h.CheckpointSeq, h.Salt1, h.Salt2), b[:WALHeaderSize]) {
			t.Fatal("accepted header does not re-encode to itself")
		}
	})
}

// repairWAL rewrites the header checksum and every whole frame's checksum
// of b so that they chain, whatever the other fields say. Fuzzing with it
// reaches frames past the first, which random bytes almost never do.
func repairWAL(b []byte) {
	if len(b) < WALHeaderSize {
		return
	}
	bigEndian := binary.BigEndian.Uint32(b)&1 == 1
	s1, s2 := WALChecksum(bigEndian, 0, 0, b[:24])
	binary.BigEndian.PutUint32(b[24:], s1)
	binary.BigEndian.PutUint32(b[28:], s2)
	ps := int(binary.BigEndian.Uint32(b[8:]))
	if !isValidPageSize(uint32(ps)) {
		return
	}
	for off := WALHeaderSize; off+WALFrameHeaderSize+ps <= len(b); off += WALFrameHeaderSize + ps {
		s1, s2 = WALChecksum(bigEndian, s1, s2, b[off:off+8])
		s1, s2 = WALChecksum(bigEndian, s1, s2, b[off+WALFrameHeaderSize:off+WALFrameHeaderSize+ps])
		binary.BigEndian.PutUint32(b[off+16:], s1)
		binary.BigEndian.PutUint32(b[off+20:], s2)
	}
}

// FuzzScanWAL checks ScanWAL's invariants on arbitrary bytes, and with
// repair on bytes whose checksums all chain. Locally, run it with a short
// -fuzzminimizetime: minimizing kilobyte inputs otherwise takes the run.
func FuzzScanWAL(f *testing.F) {
	for _, repair := range []bool{false, true} {
		f.Add(newTestWAL(512, false, 1, 2).frame(1, 0, 1).frame(2, 2, 2).frame(1, 0, 3).buf, repair)
		f.Add(newTestWAL(512, true, 1, 2).frame(1, 1, 1).frame(1, 1, 1).buf, repair)
		f.Add(newTestWAL(1024, false, 7, 8).frame(2, 0, 1).frame(3, 3, 2).frame(3, 4, 3).frame(4, 0, 4).buf, repair)
		f.Add(walHeaderBytes(512, false, 0, 0, 0), repair)
	}
	f.Fuzz(func(t *testing.T, b []byte, repair bool) {
		if repair {
			repairWAL(b)
		}
		size := int64(len(b))
		s, err := ScanWAL(bytes.NewReader(b), size)
		if err != nil {
			t.Fatal(err)
		}
		checkScan(t, s, size)
		if !s.Valid {
			return
		}
		// Continuing from the header, or from any commit, agrees.
		fsz := int64(s.Header.PageSize) + WALFrameHeaderSize
		from := []WALFrame{{Offset: WALHeaderSize - fsz, Checksum1: s.Header.Checksum1, Checksum2: s.Header.Checksum2}}
		for _, fr := range s.Frames {
			if fr.Commit != 0 {
				from = append(from, fr)
			}
		}
		for _, fr := range from {
			c, err := ScanWALFrom(bytes.NewReader(b), size, s.Header, fr.Offset+fsz, fr.Checksum1, fr.Checksum2)
			if err != nil {
				t.Fatal(err)
			}
			if c.End != s.End || c.Checksum1 != s.Checksum1 || c.Checksum2 != s.Checksum2 {
				t.Fatalf("from %d: end %d, want %d", fr.Offset+fsz, c.End, s.End)
			}
		}
	})
}

func BenchmarkScanWAL(b *testing.B) {
	w := newTestWAL(4096, false, 1, 2)
	for i := range 2048 { // 8 MiB
		w.frame(uint32(i+1), uint32(i+1), byte(i))
	}
	r := bytes.NewReader(w.buf)
	b.SetBytes(int64(len(w.buf)))
	for b.Loop() {
		if s, err := ScanWAL(r, int64(len(w.buf))); err != nil || len(s.Frames) != 2048 {
			b.Fatal(err)
		}
	}
}
