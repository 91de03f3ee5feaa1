package pager

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// testWAL builds WAL files frame by frame with correct checksums; tests then
// damage them.
type testWAL struct {
	buf      []byte
	hdr      WALHeader
	s1, s2   uint32
	pageSize uint32
}

func newTestWAL(pageSize uint32, bigEndian bool, salt1, salt2 uint32) *testWAL {
	w := &testWAL{pageSize: pageSize}
	w.buf = walHeaderBytes(pageSize, bigEndian, 7, salt1, salt2)
	hdr, err := ParseWALHeader(w.buf)
	if err != nil {
		panic(err)
	}
	w.hdr, w.s1, w.s2 = hdr, hdr.Checksum1, hdr.Checksum2
	return w
}

func walHeaderBytes(pageSize uint32, bigEndian bool, ckpt, salt1, salt2 uint32) []byte {
	b := make([]byte, WALHeaderSize)
	magic := uint32(walMagicLE)
	if bigEndian {
		magic = walMagicBE
	}
	for i, v := range []uint32{magic, walVersion, pageSize, ckpt, salt1, salt2} {
		binary.BigEndian.PutUint32(b[4*i:], v)
	}
	s1, s2 := WALChecksum(bigEndian, 0, 0, b[:24])
	binary.BigEndian.PutUint32(b[24:], s1)
	binary.BigEndian.PutUint32(b[28:], s2)
	return b
}

// frame appends a valid frame whose page is filled from fill.
func (w *testWAL) frame(pgno, commit uint32, fill byte) *testWAL {
	return w.frameSalts(pgno, commit, w.hdr.Salt1, w.hdr.Salt2, fill)
}

// frameSalts appends a frame with the given salts and a checksum continuing
// the chain.
func (w *testWAL) frameSalts(pgno, commit, salt1, salt2 uint32, fill byte) *testWAL {
	f := make([]byte, WALFrameHeaderSize+int(w.pageSize))
	for i := range f[WALFrameHeaderSize:] {
		f[WALFrameHeaderSize+i] = fill + byte(i*7)
	}
	for i, v := range []uint32{pgno, commit, salt1, salt2} {
		binary.BigEndian.PutUint32(f[4*i:], v)
	}
	w.s1, w.s2 = WALChecksum(w.hdr.BigEndian(), w.s1, w.s2, f[:8])
	w.s1, w.s2 = WALChecksum(w.hdr.BigEndian(), w.s1, w.s2, f[WALFrameHeaderSize:])
	binary.BigEndian.PutUint32(f[16:], w.s1)
	binary.BigEndian.PutUint32(f[20:], w.s2)
	w.buf = append(w.buf, f...)
	return w
}

func (w *testWAL) offset(n int) int64 { return WALFrameOffset(w.pageSize, n) }

func TestParseWALHeader(t *testing.T) {
	valid := walHeaderBytes(4096, false, 3, 11, 22)
	mod := func(f func(b []byte)) []byte {
		b := bytes.Clone(valid)
		f(b)
		return b
	}
	resum := func(b []byte) { // fix the checksum after editing fields
		s1, s2 := WALChecksum(binary.BigEndian.Uint32(b)&1 == 1, 0, 0, b[:24])
		binary.BigEndian.PutUint32(b[24:], s1)
		binary.BigEndian.PutUint32(b[28:], s2)
	}
	tests := []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"little-endian", valid, true},
		{"big-endian", walHeaderBytes(4096, true, 3, 11, 22), true},
		{"page size 512", walHeaderBytes(512, false, 0, 1, 2), true},
		{"page size 65536", walHeaderBytes(65536, true, 0, 1, 2), true},
		{"longer buffer", append(bytes.Clone(valid), 1, 2, 3), true},
		{"empty", nil, false},
		{"truncated", valid[:31], false},
		{"bad magic", mod(func(b []byte) { binary.BigEndian.PutUint32(b, 0x377f0681); resum(b) }), false},
		{"bad version", mod(func(b []byte) { binary.BigEndian.PutUint32(b[4:], 3007001); resum(b) }), false},
		{"page size 0", walHeaderBytes(0, false, 0, 1, 2), false},
		{"page size 256", walHeaderBytes(256, false, 0, 1, 2), false},
		{"page size 1000", walHeaderBytes(1000, false, 0, 1, 2), false},
		{"page size 131072", walHeaderBytes(131072, false, 0, 1, 2), false},
		{"bad checksum 1", mod(func(b []byte) { b[27] ^= 1 }), false},
		{"bad checksum 2", mod(func(b []byte) { b[31] ^= 1 }), false},
		{"field changed", mod(func(b []byte) { b[16] ^= 1 }), false},
		{"wrong checksum byte order", mod(func(b []byte) { b[3] |= 1 }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseWALHeader(tt.b)
			if tt.ok != (err == nil) {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidWAL) {
					t.Fatalf("err = %v, does not wrap ErrInvalidWAL", err)
				}
				return
			}
			if h.Version != walVersion || h.BigEndian() != (h.Magic == walMagicBE) {
				t.Fatalf("header = %+v", h)
			}
		})
	}
	h, _ := ParseWALHeader(valid)
	want := WALHeader{Magic: walMagicLE, Version: walVersion, PageSize: 4096, CheckpointSeq: 3, Salt1: 11, Salt2: 22,
		Checksum1: binary.BigEndian.Uint32(valid[24:]), Checksum2: binary.BigEndian.Uint32(valid[28:])}
	if h != want {
		t.Fatalf("header = %+v, want %+v", h, want)
	}
}

func TestWALChecksumKnown(t *testing.T) {
	b := []byte{0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4}
	// Words 1,2,3,4: s1 = 0+1+0 = 1; s2 = 0+2+1 = 3; s1 = 1+3+3 = 7; s2 = 3+4+7 = 14.
	if s1, s2 := WALChecksum(true, 0, 0, b); s1 != 7 || s2 != 14 {
		t.Fatalf("big-endian = %d,%d, want 7,14", s1, s2)
	}
	le := []byte{1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0}
	if s1, s2 := WALChecksum(false, 0, 0, le); s1 != 7 || s2 != 14 {
		t.Fatalf("little-endian = %d,%d, want 7,14", s1, s2)
	}
	// Continuing in two pieces equals one pass.
	a1, a2 := WALChecksum(false, 5, 9, le[:8])
	a1, a2 = WALChecksum(false, a1, a2, le[8:])
	if b1, b2 := WALChecksum(false, 5, 9, le); a1 != b1 || a2 != b2 {
		t.Fatalf("split = %d,%d, whole = %d,%d", a1, a2, b1, b2)
	}
}

func TestParseWALFrameHeader(t *testing.T) {
	b := []byte{0, 0, 0, 2, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 3, 0xff, 0, 0, 1, 0, 0, 1, 0}
	want := WALFrameHeader{Pgno: 2, Commit: 9, Salt1: 1, Salt2: 3, Checksum1: 0xff000001, Checksum2: 256}
	if got := ParseWALFrameHeader(b); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if got := WALFrameOffset(4096, 1); got != 32 {
		t.Fatalf("frame 1 offset = %d", got)
	}
	if got := WALFrameOffset(65536, 3); got != 32+2*(65536+24) {
		t.Fatalf("frame 3 offset = %d", got)
	}
}

// frameSummary is (pgno, commit) of each frame, for comparing scans.
func frameSummary(fs []WALFrame) [][2]uint32 {
	var out [][2]uint32
	for _, f := range fs {
		out = append(out, [2]uint32{f.Pgno, f.Commit})
	}
	return out
}

func TestScanWAL(t *testing.T) {
	const ps = 512
	fs := int64(ps + WALFrameHeaderSize)
	type frames = [][2]uint32
	tests := []struct {
		name   string
		build  func() []byte
		valid  bool
		frames frames
		end    int64
	}{
		{"empty", func() []byte { return nil }, false, nil, 0},
		{"short header", func() []byte { return newTestWAL(ps, false, 1, 2).buf[:31] }, false, nil, 0},
		{"header only", func() []byte { return newTestWAL(ps, false, 1, 2).buf }, true, nil, 32},
		{"bad magic", func() []byte { b := newTestWAL(ps, false, 1, 2).frame(1, 1, 0).buf; b[0] = 0; return b }, false, nil, 0},
		{"bad header checksum", func() []byte { b := newTestWAL(ps, false, 1, 2).frame(1, 1, 0).buf; b[25]++; return b }, false, nil, 0},
		{"bad page size", func() []byte { return walHeaderBytes(768, false, 0, 1, 2) }, false, nil, 0},
		{"one commit", func() []byte { return newTestWAL(ps, false, 1, 2).frame(1, 1, 0).buf }, true, frames{{1, 1}}, 32 + fs},
		{"one commit big-endian", func() []byte { return newTestWAL(ps, true, 1, 2).frame(1, 1, 0).buf }, true, frames{{1, 1}}, 32 + fs},
		{"spilled transaction", func() []byte {
			return newTestWAL(ps, false, 1, 2).frame(3, 0, 1).frame(2, 0, 2).frame(1, 3, 3).buf
		}, true, frames{{3, 0}, {2, 0}, {1, 3}}, 32 + 3*fs},
		{"uncommitted only", func() []byte { return newTestWAL(ps, false, 1, 2).frame(1, 0, 1).frame(2, 0, 2).buf }, true, nil, 32},
		{"uncommitted after commit dropped", func() []byte {
			return newTestWAL(ps, false, 1, 2).frame(1, 2, 1).frame(2, 0, 2).frame(1, 0, 3).buf
		}, true, frames{{1, 2}}, 32 + fs},
		{"commit in the middle", func() []byte {
			return newTestWAL(ps, false, 1, 2).frame(1, 2, 1).frame(2, 0, 2).frame(2, 4, 3).frame(3, 0, 4).buf
		}, true, frames{{1, 2}, {2, 0}, {2, 4}}, 32 + 3*fs},
		{"salt mismatch stops", func() []byte {
			return newTestWAL(ps, false, 1, 2).frame(1, 1, 1).frameSalts(2, 2, 1, 3, 2).frame(3, 3, 3).buf
		}, true, frames{{1, 1}}, 32 + fs},
		{"bad frame checksum stops", func() []byte {
			w := newTestWAL(ps, false, 1, 2).frame(1, 1, 1).frame(2, 2, 2).frame(3, 3, 3)
			w.buf[w.offset(2)+WALFrameHeaderSize+100]++ // page data of frame 2
			return w.buf
		}, true, frames{{1, 1}}, 32 + fs},
		{"checksum covers commit field", func() []byte {
			w := newTestWAL(ps, false, 1, 2).frame(1, 1, 1).frame(2, 0, 2)
			w.buf[w.offset(2)+7] = 2
			return w.buf
		}, true, frames{{1, 1}}, 32 + fs},
		{"page number 0 stops", func() []byte {
			return newTestWAL(ps, false, 1, 2).frame(1, 1, 1).frame(0, 2, 2).frame(3, 3, 3).buf
		}, true, frames{{1, 1}}, 32 + fs},
		{"truncated commit frame", func() []byte {
			b := newTestWAL(ps, false, 1, 2).frame(1, 1, 1).frame(2, 2, 2).buf
			return b[:len(b)-1]
		}, true, frames{{1, 1}}, 32 + fs},
		{"truncated frame header", func() []byte {
			b := newTestWAL(ps, false, 1, 2).frame(1, 1, 1).frame(2, 2, 2).buf
			return b[:32+fs+10]
		}, true, frames{{1, 1}}, 32 + fs},
		{"stale frames of an older generation", func() []byte {
			old := newTestWAL(ps, false, 5, 9).frame(1, 1, 1).frame(2, 2, 2).frame(3, 3, 3).buf
			cur := newTestWAL(ps, false, 6, 77).frame(4, 4, 4).buf
			return append(cur, old[len(cur):]...)
		}, true, frames{{4, 4}}, 32 + fs},
		{"rolled-back frames overwritten", func() []byte {
			// Frames 2-3 were an abandoned transaction; a new commit
			// overwrote frame 2 only, so frame 3's checksum no longer chains.
			abandoned := newTestWAL(ps, false, 1, 2).frame(1, 1, 1).frame(2, 0, 2).frame(3, 0, 3).buf
			cur := newTestWAL(ps, false, 1, 2).frame(1, 1, 1).frame(5, 5, 9).buf
			return append(cur, abandoned[len(cur):]...)
		}, true, frames{{1, 1}, {5, 5}}, 32 + 2*fs},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.build()
			s, err := ScanWAL(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			if s.Valid != tt.valid || s.End != tt.end {
				t.Fatalf("valid=%v end=%d, want valid=%v end=%d", s.Valid, s.End, tt.valid, tt.end)
			}
			if got := frameSummary(s.Frames); !equalFrames(got, tt.frames) {
				t.Fatalf("frames = %v, want %v", got, tt.frames)
			}
			checkScan(t, s, int64(len(b)))
			if s.Valid && len(s.Frames) == 0 && (s.Checksum1 != s.Header.Checksum1 || s.Checksum2 != s.Header.Checksum2) {
				t.Fatalf("checksum at end %08x:%08x, want header's", s.Checksum1, s.Checksum2)
			}
		})
	}
}

func equalFrames(a, b [][2]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// checkScan checks the invariants every scan result must hold.
func checkScan(t *testing.T, s *WALScan, size int64) {
	t.Helper()
	if !s.Valid {
		if s.End != 0 || len(s.Frames) != 0 {
			t.Fatalf("invalid scan with end=%d frames=%d", s.End, len(s.Frames))
		}
		return
	}
	if s.End > size || s.End < WALHeaderSize {
		t.Fatalf("end %d outside [32, %d]", s.End, size)
	}
	fsz := int64(s.Header.PageSize) + WALFrameHeaderSize
	for i, f := range s.Frames {
		if f.Offset != WALFrameOffset(s.Header.PageSize, f.N) || f.Offset+fsz > size || f.Pgno == 0 {
			t.Fatalf("frame %+v: bad offset/pgno for size %d", f, size)
		}
		if i > 0 && (f.N != s.Frames[i-1].N+1) {
			t.Fatalf("frames not consecutive: %+v after %+v", f, s.Frames[i-1])
		}
	}
	if n := len(s.Frames); n > 0 {
		last := s.Frames[n-1]
		if last.Commit == 0 || last.Offset+fsz != s.End || last.Checksum1 != s.Checksum1 || last.Checksum2 != s.Checksum2 {
			t.Fatalf("last frame %+v does not match end %d / checksum %08x:%08x", last, s.End, s.Checksum1, s.Checksum2)
		}
	}
}

func TestScanWALFrom(t *testing.T) {
	w := newTestWAL(1024, true, 3, 4).frame(1, 1, 1).frame(2, 0, 2).frame(3, 3, 3).frame(1, 0, 4).frame(4, 4, 5).frame(2, 0, 6)
	full, err := ScanWAL(bytes.NewReader(w.buf), int64(len(w.buf)))
	if err != nil || len(full.Frames) != 5 {
		t.Fatalf("full scan: %v, %d frames", err, len(full.Frames))
	}
	// From the header: same as ScanWAL.
	s, err := ScanWALFrom(bytes.NewReader(w.buf), int64(len(w.buf)), full.Header, 32, full.Header.Checksum1, full.Header.Checksum2)
	if err != nil || !equalFrames(frameSummary(s.Frames), frameSummary(full.Frames)) || s.End != full.End {
		t.Fatalf("from header: %v %+v", err, s)
	}
	// From after the first commit: the last two commits, numbered on.
	f1 := full.Frames[0]
	s, err = ScanWALFrom(bytes.NewReader(w.buf), int64(len(w.buf)), full.Header, f1.Offset+1024+24, f1.Checksum1, f1.Checksum2)
	if err != nil {
		t.Fatal(err)
	}
	if s.Frames[0].N != 2 || !equalFrames(frameSummary(s.Frames), frameSummary(full.Frames[1:])) || s.End != full.End ||
		s.Checksum1 != full.Checksum1 || s.Checksum2 != full.Checksum2 {
		t.Fatalf("from frame 2: %+v", s)
	}
	checkScan(t, s, int64(len(w.buf)))
	// From the end: nothing new, position unchanged.
	s, err = ScanWALFrom(bytes.NewReader(w.buf), int64(len(w.buf)), full.Header, full.End, full.Checksum1, full.Checksum2)
	if err != nil || !s.Valid || len(s.Frames) != 0 || s.End != full.End || s.Checksum1 != full.Checksum1 {
		t.Fatalf("from end: %v %+v", err, s)
	}
	// A wrong running checksum finds nothing.
	s, _ = ScanWALFrom(bytes.NewReader(w.buf), int64(len(w.buf)), full.Header, f1.Offset+1024+24, f1.Checksum1+1, f1.Checksum2)
	if len(s.Frames) != 0 || s.End != f1.Offset+1024+24 {
		t.Fatalf("wrong checksum: %+v", s)
	}
	// Past the end of a shrunken file: not valid.
	s, err = ScanWALFrom(bytes.NewReader(w.buf), 32, full.Header, full.End, full.Checksum1, full.Checksum2)
	if err != nil || s.Valid || s.End != 0 {
		t.Fatalf("past end: %v %+v", err, s)
	}
	// Arguments that are not a position.
	if _, err := ScanWALFrom(bytes.NewReader(w.buf), int64(len(w.buf)), full.Header, 33, 0, 0); err == nil {
		t.Fatal("misaligned offset accepted")
	}
	if _, err := ScanWALFrom(bytes.NewReader(w.buf), int64(len(w.buf)), WALHeader{PageSize: 1000}, 32, 0, 0); err == nil {
		t.Fatal("bad page size accepted")
	}
}

// countingReader counts ReadAt calls and can fail.
type countingReader struct {
	r     io.ReaderAt
	calls int
	fail  error
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.calls++
	if c.fail != nil {
		return 0, c.fail
	}
	return c.r.ReadAt(p, off)
}

func TestScanWALReadsInChunks(t *testing.T) {
	w := newTestWAL(4096, false, 1, 2)
	for i := range 2000 { // ~8 MiB
		w.frame(uint32(i%50+1), uint32(i%3), byte(i))
	}
	w.frame(1, 50, 0)
	cr := &countingReader{r: bytes.NewReader(w.buf)}
	s, err := ScanWAL(cr, int64(len(w.buf)))
	if err != nil || len(s.Frames) != 2001 || s.End != int64(len(w.buf)) {
		t.Fatalf("scan: %v, %d frames, end %d of %d", err, len(s.Frames), s.End, len(w.buf))
	}
	if max := len(w.buf)/scanChunkSize + 2; cr.calls > max {
		t.Fatalf("%d ReadAt calls for %d bytes, want <= %d", cr.calls, len(w.buf), max)
	}
	// The size given is honored even if the reader has more.
	s, _ = ScanWAL(bytes.NewReader(w.buf), w.offset(3))
	if len(s.Frames) != 2 || s.End != w.offset(3) {
		t.Fatalf("size-limited scan: %d frames, end %d", len(s.Frames), s.End)
	}
	// A file shorter than told is scanned as far as it goes.
	short := w.buf[:w.offset(4)]
	s, err = ScanWAL(bytes.NewReader(short), int64(len(w.buf)))
	if err != nil || s.End != w.offset(4) {
		t.Fatalf("short file: %v, end %d", err, s.End)
	}
	// I/O errors are errors.
	boom := errors.New("boom")
	if _, err := ScanWAL(&countingReader{r: bytes.NewReader(w.buf), fail: boom}, int64(len(w.buf))); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
}
