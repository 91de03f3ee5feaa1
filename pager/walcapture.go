package pager

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/superfly/ltx"
)

// walCapture follows the WAL of the current generation as SQLite writes it.
//
// A transaction is the frames after the last committed one. Its commit is
// recorded when its commit frame (commit field != 0) and every frame before it
// carry the generation's salts and chain their checksums from the last commit:
// exactly what SQLite's own recovery would accept. So a commit SQLite could
// still lose (a spilled transaction whose headers are not rewritten yet) is
// never recorded early, and one it will keep is recorded before the write that
// completed it returns.
type walCapture struct {
	hdr    WALHeader
	valid  bool // hdr is the header of the current generation
	last   int  // last committed frame of this generation (0: none)
	s1, s2 uint32

	pending []pendingFrame // frames last+1, last+2, ... as written so far
	cand    int            // lowest pending frame whose commit field is set (0: none)

	// index maps a page to the data offset of its newest committed frame in
	// this generation; pages not in it are read from the database file.
	index map[uint32]int64

	buf    []byte
	frames []txFrame
}

// pendingFrame is what is known of an uncommitted frame from the writes.
type pendingFrame struct {
	head   [WALFrameHeaderSize]byte // the frame header as written
	mask   uint32                   // which bytes of head were written
	done   bool                     // the last byte of the frame was written
	commit uint32
}

type txFrame struct {
	pgno uint32
	off  int64 // offset of the page data in the WAL
}

func (w *walCapture) reset(h WALHeader, valid bool) {
	w.hdr, w.valid = h, valid
	w.last, w.cand = 0, 0
	w.s1, w.s2 = h.Checksum1, h.Checksum2
	w.pending = w.pending[:0]
	clear(w.index)
	if w.index == nil {
		w.index = map[uint32]int64{}
	}
}

func (w *walCapture) frameSize() int64 { return int64(w.hdr.PageSize) + WALFrameHeaderSize }

// walWrite handles a write of p at off to the WAL.
func (db *DB) walWrite(p []byte, off int64) error {
	w := &db.wal
	if off == 0 && len(p) >= WALHeaderSize {
		h, err := ParseWALHeader(p)
		w.reset(h, err == nil) // a new generation starts (rule 7)
		if len(p) == WALHeaderSize {
			return nil
		}
		p, off = p[WALHeaderSize:], WALHeaderSize
	}
	if !w.valid || off < WALHeaderSize {
		return nil
	}
	fsz := w.frameSize()
	end := off + int64(len(p))
	touchedHead := false
	for n := int((off-WALHeaderSize)/fsz) + 1; ; n++ {
		fo := WALFrameOffset(w.hdr.PageSize, n)
		if fo >= end {
			break
		}
		if n <= w.last {
			continue // committed frames are not rewritten
		}
		i := n - w.last - 1
		if i > 1<<24 {
			return fmt.Errorf("wal write at %d far past the last commit (frame %d)", off, w.last)
		}
		for len(w.pending) <= i {
			w.pending = append(w.pending, pendingFrame{})
		}
		f := &w.pending[i]
		// Bytes of the frame header in this write.
		if lo, hi := max(off, fo), min(end, fo+WALFrameHeaderSize); lo < hi {
			copy(f.head[lo-fo:hi-fo], p[lo-off:hi-off])
			for b := lo - fo; b < hi-fo; b++ {
				f.mask |= 1 << b
			}
			touchedHead = true
			if f.mask&0xff == 0xff {
				w.setCommit(n, binary.BigEndian.Uint32(f.head[4:8]))
			}
		}
		if end >= fo+fsz && off < fo+fsz {
			f.done = true
		}
	}
	if w.cand == 0 {
		return nil
	}
	c := &w.pending[w.cand-w.last-1]
	if !c.done || !(touchedHead || end >= WALFrameOffset(w.hdr.PageSize, w.cand)+fsz) {
		return nil
	}
	// The common one-frame transaction: its header came in an earlier
	// write and this write is exactly its page, so nothing is read back.
	if w.cand == w.last+1 && c.mask == 1<<WALFrameHeaderSize-1 &&
		off == WALFrameOffset(w.hdr.PageSize, w.cand)+WALFrameHeaderSize && int64(len(p)) == int64(w.hdr.PageSize) {
		return db.walTryCommit(c.head[:], p)
	}
	return db.walTryCommit(nil, nil)
}

// setCommit notes the commit field of pending frame n and keeps cand the
// lowest pending frame with a commit field.
func (w *walCapture) setCommit(n int, commit uint32) {
	w.pending[n-w.last-1].commit = commit
	switch {
	case commit != 0 && (w.cand == 0 || n < w.cand):
		w.cand = n
	case commit == 0 && n == w.cand:
		w.cand = 0
		for i := n - w.last; i < len(w.pending); i++ {
			if w.pending[i].commit != 0 && w.pending[i].mask&0xff == 0xff {
				w.cand = w.last + 1 + i
				break
			}
		}
	}
}

// walTruncate handles the WAL shrinking to size (0: truncated or removed).
// A WAL is only emptied after a complete checkpoint, so every committed page
// is in the database file then.
func (db *DB) walTruncate(size int64) {
	w := &db.wal
	if size < WALHeaderSize {
		w.reset(WALHeader{}, false)
		return
	}
	if !w.valid {
		return
	}
	keep := int((size-WALHeaderSize)/w.frameSize()) - w.last
	if keep < len(w.pending) && keep >= 0 {
		w.pending = w.pending[:keep]
		if w.cand > w.last+keep {
			w.cand = 0
		}
	}
}

// walTryCommit records the pending transaction if it is complete and valid.
// When the transaction is one frame whose header and page the caller has in
// memory (head, page), they are used instead of reading the WAL back.
func (db *DB) walTryCommit(head, page []byte) error {
	w := &db.wal
	k, n0 := w.cand, w.last+1
	fsz := w.frameSize()

	// Cheap test first: the commit frame's header must carry this
	// generation's salts (a spilled transaction writes it with zero salts and
	// rewrites it last).
	if head == nil {
		var hb [WALFrameHeaderSize]byte
		if err := db.files.readAt(FileWAL, hb[:], WALFrameOffset(w.hdr.PageSize, k)); err != nil {
			return err
		}
		head = hb[:]
	}
	if fh := ParseWALFrameHeader(head); fh.Commit == 0 || fh.Salt1 != w.hdr.Salt1 || fh.Salt2 != w.hdr.Salt2 {
		return nil
	}

	// Validate the whole transaction as SQLite's recovery would.
	const chunk = 4 << 20
	start := WALFrameOffset(w.hdr.PageSize, n0)
	total := int64(k-n0+1) * fsz
	inMemory := total <= chunk
	w.frames = w.frames[:0]
	s1, s2 := w.s1, w.s2
	be := w.hdr.BigEndian()
	var commit uint32
	for pos := int64(0); pos < total; {
		n := min(total-pos, max(chunk/fsz, 1)*fsz)
		if int64(cap(w.buf)) < n {
			w.buf = make([]byte, n)
		}
		buf := w.buf[:n]
		if page != nil {
			copy(buf, head)
			copy(buf[WALFrameHeaderSize:], page)
		} else if err := db.files.readAt(FileWAL, buf, start+pos); err != nil {
			return err
		}
		for b := int64(0); b < n; b += fsz {
			fr := buf[b : b+fsz]
			fh := ParseWALFrameHeader(fr)
			if fh.Pgno == 0 || fh.Salt1 != w.hdr.Salt1 || fh.Salt2 != w.hdr.Salt2 {
				return nil
			}
			s1, s2 = WALChecksum(be, s1, s2, fr[:8])
			s1, s2 = WALChecksum(be, s1, s2, fr[WALFrameHeaderSize:])
			if s1 != fh.Checksum1 || s2 != fh.Checksum2 {
				return nil
			}
			w.frames = append(w.frames, txFrame{pgno: fh.Pgno, off: start + pos + b + WALFrameHeaderSize})
			commit = fh.Commit
		}
		pos += n
	}

	// Padding (psow=0) repeats the previous commit frame: not a new commit.
	if k == n0 && db.isPadding(commit) {
		w.advance(k, s1, s2, w.frames) // the copy is now the page's newest frame
		return nil
	}

	// Newest frame per page wins; pages past the new size are dropped.
	lock := ltx.LockPgno(w.hdr.PageSize)
	slices.SortStableFunc(w.frames, func(a, b txFrame) int { return int(a.pgno) - int(b.pgno) })
	pages := w.frames[:0]
	for i, f := range w.frames {
		if i+1 < len(w.frames) && w.frames[i+1].pgno == f.pgno {
			continue
		}
		if f.pgno != 0 && f.pgno <= commit && f.pgno != lock {
			pages = append(pages, f)
		}
	}

	full := db.txid == 0 || db.needFull || w.hdr.PageSize != db.pageSize
	inTx := func(p uint32) (txFrame, bool) {
		i, ok := slices.BinarySearchFunc(pages, p, func(f txFrame, p uint32) int { return int(f.pgno) - int(p) })
		if ok {
			return pages[i], true
		}
		return txFrame{}, false
	}
	readFrame := func(f txFrame, p []byte) ([]byte, error) {
		if inMemory {
			o := f.off - start
			return w.buf[o : o+int64(w.hdr.PageSize)], nil
		}
		return p, db.files.readAt(FileWAL, p, f.off)
	}
	var src pageSource
	if full {
		src = db.fullSource(w.hdr.PageSize, commit, func(pgno uint32, p []byte) error {
			if f, ok := inTx(pgno); ok {
				data, err := readFrame(f, p)
				copy(p, data)
				return err
			}
			return db.readLogical(pgno, p)
		})
	} else {
		growth := db.growthPages(commit, func(p uint32) bool { _, ok := inTx(p); return ok })
		src = func(yield func(uint32, []byte) error) error {
			buf := db.pageBuf(w.hdr.PageSize)
			gi := 0
			for _, f := range pages {
				for ; gi < len(growth) && growth[gi] < f.pgno; gi++ {
					clear(buf) // SQLite reads pages past the old end as zeros
					if err := yield(growth[gi], buf); err != nil {
						return err
					}
				}
				data, err := readFrame(f, buf)
				if err != nil {
					return err
				}
				if err := yield(f.pgno, data); err != nil {
					return err
				}
			}
			for ; gi < len(growth); gi++ {
				clear(buf)
				if err := yield(growth[gi], buf); err != nil {
					return err
				}
			}
			return nil
		}
	}
	shrunk := commit < db.commit
	err := db.record(commitSpec{
		pageSize:  w.hdr.PageSize,
		commit:    commit,
		full:      full,
		pages:     src,
		walOffset: start,
		walSize:   total,
		walSalt1:  w.hdr.Salt1,
		walSalt2:  w.hdr.Salt2,
	})
	if err != nil {
		return err
	}
	db.needFull = false
	w.advance(k, s1, s2, pages)
	if shrunk {
		for p := range w.index {
			if p > commit {
				delete(w.index, p) // cut off by the shrink
			}
		}
	}
	return nil
}

// advance moves the committed position to frame k.
func (w *walCapture) advance(k int, s1, s2 uint32, pages []txFrame) {
	for _, f := range pages {
		w.index[f.pgno] = f.off
	}
	w.last, w.s1, w.s2 = k, s1, s2
	w.pending = w.pending[:0]
	w.cand = 0
}

// isPadding reports whether the single frame just validated (in w.frames)
// repeats the last commit: same size and the page exactly as committed.
func (db *DB) isPadding(commit uint32) bool {
	if len(db.wal.frames) != 1 || commit != db.commit || db.txid == 0 {
		return false
	}
	f := db.wal.frames[0]
	if f.pgno == 0 || f.pgno > commit || db.wal.index[f.pgno] != f.off-db.wal.frameSize() {
		return false // padding copies the frame right before it
	}
	o := f.off - WALFrameOffset(db.wal.hdr.PageSize, db.wal.last+1)
	data := db.wal.buf[o : o+int64(db.wal.hdr.PageSize)]
	return uint64(PageChecksum(f.pgno, data)) == db.chk[f.pgno-1]
}
