package ship

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/superfly/ltx"
)

// fileSource reads the LTX files a compaction merges: from the local store
// while it still has them (no request, no transfer), else from the replica
// being compacted.
type fileSource struct {
	target Replica
	local  *Store // nil: read the target only
}

// read returns one file's bytes.
func (s fileSource) read(ctx context.Context, db string, fi *ltx.FileInfo) ([]byte, error) {
	if s.local != nil {
		var data []byte
		var err error
		if fi.Level == 0 {
			data, err = s.local.ReadLTX(db, fi.MinTXID, fi.MaxTXID)
		} else {
			data, err = os.ReadFile(filepath.Join(s.local.Root, LTXPath(db, fi.Level, fi.MinTXID, fi.MaxTXID)))
		}
		if err == nil {
			return data, nil
		} else if !errors.Is(err, ErrNotFound) && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	rc, err := s.target.OpenLTX(ctx, db, fi.Level, fi.MinTXID, fi.MaxTXID)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", LTXPath(db, fi.Level, fi.MinTXID, fi.MaxTXID), err)
	}
	return data, nil
}

// compactLTX merges LTX files whose TXIDs chain (oldest first) into one:
// the newest version of each page up to the last file's size, the first
// file's pre-apply checksum and the last file's post-apply checksum and
// commit time. Each input is decoded once, in one pass that merges them and
// verifies each as it goes (its file checksum, and the checksum chain
// between them); a window whose merge would differ from replaying it is
// refused (an *unsafeWindowError, ErrUnsafeWindow to errors.Is), and the
// result is checked against the inputs (checkMerged) before it is returned.
func compactLTX(ctx context.Context, inputs [][]byte) ([]byte, ltx.Header, error) {
	if len(inputs) == 0 {
		return nil, ltx.Header{}, errors.New("nothing to merge")
	}
	type input struct {
		dec  *ltx.Decoder
		ph   ltx.PageHeader // the page in buf; zero when none is read
		buf  []byte
		done bool
	}
	ins := make([]*input, len(inputs))
	sums := make([]ltxSummary, len(inputs))
	for i, b := range inputs {
		dec := ltx.NewDecoder(bytes.NewReader(b))
		dec.SetRetainPageIndex(false)
		if err := dec.DecodeHeader(); err != nil {
			return nil, ltx.Header{}, fmt.Errorf("input %d: %w", i, err)
		}
		sums[i].hdr = dec.Header()
		if i > 0 {
			prev := sums[i-1].hdr
			if sums[i].hdr.PageSize != prev.PageSize {
				return nil, ltx.Header{}, fmt.Errorf("txid %s has page size %d, txid %s %d", sums[i].hdr.MinTXID, sums[i].hdr.PageSize, prev.MaxTXID, prev.PageSize)
			}
			if sums[i].hdr.MinTXID != prev.MaxTXID+1 {
				return nil, ltx.Header{}, fmt.Errorf("txid %s does not follow txid %s", sums[i].hdr.MinTXID, prev.MaxTXID)
			}
		}
		ins[i] = &input{dec: dec, buf: make([]byte, sums[i].hdr.PageSize)}
	}
	first, last := sums[0].hdr, sums[len(sums)-1].hdr
	hdr := ltx.Header{Version: ltx.Version, PageSize: first.PageSize, Commit: last.Commit,
		MinTXID: first.MinTXID, MaxTXID: last.MaxTXID, Timestamp: last.Timestamp, PreApplyChecksum: first.PreApplyChecksum}
	var out bytes.Buffer
	enc, err := ltx.NewEncoder(&out)
	if err != nil {
		return nil, ltx.Header{}, err
	}
	defer enc.Cleanup()
	if err := enc.EncodeHeader(hdr); err != nil {
		return nil, ltx.Header{}, err
	}
	// Merge the page blocks (each ascending by page number): at each step
	// the lowest page any input has next, taken from the newest input that
	// has it.
	for n := 0; ; n++ {
		if n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, ltx.Header{}, err
			}
		}
		var pgno uint32
		for i, in := range ins {
			if in.ph.Pgno == 0 && !in.done {
				if err := in.dec.DecodePage(&in.ph, in.buf); err == io.EOF {
					in.done = true
					continue
				} else if err != nil {
					return nil, ltx.Header{}, fmt.Errorf("input %d (txid %s): %w", i, sums[i].hdr.MaxTXID, err)
				}
				sums[i].pgnos = append(sums[i].pgnos, in.ph.Pgno)
			}
			if !in.done && (pgno == 0 || in.ph.Pgno < pgno) {
				pgno = in.ph.Pgno
			}
		}
		if pgno == 0 {
			break
		}
		written := false
		for i := len(ins) - 1; i >= 0; i-- {
			in := ins[i]
			if in.done || in.ph.Pgno != pgno {
				continue
			}
			if !written && pgno <= hdr.Commit {
				if err := enc.EncodePage(in.ph, in.buf); err != nil {
					return nil, ltx.Header{}, err
				}
			}
			written = true
			in.ph = ltx.PageHeader{}
		}
	}
	for i, in := range ins {
		if err := in.dec.Close(); err != nil { // the file checksum
			return nil, ltx.Header{}, fmt.Errorf("input %d (txid %s): %w", i, sums[i].hdr.MaxTXID, err)
		}
		sums[i].trailer = in.dec.Trailer()
		if i > 0 && sums[i].hdr.PreApplyChecksum != sums[i-1].trailer.PostApplyChecksum {
			return nil, ltx.Header{}, fmt.Errorf("txid %s does not continue txid %s: checksum chain broken", sums[i].hdr.MinTXID, sums[i-1].hdr.MaxTXID)
		}
	}
	if err := checkWindow(sums); err != nil {
		return nil, ltx.Header{}, &unsafeWindowError{err: err, safe: safePrefix(sums)}
	}
	enc.SetPostApplyChecksum(sums[len(sums)-1].trailer.PostApplyChecksum)
	if err := enc.Close(); err != nil {
		return nil, ltx.Header{}, err
	}
	if err := checkMerged(out.Bytes(), sums[0], sums[len(sums)-1]); err != nil {
		return nil, ltx.Header{}, err
	}
	return out.Bytes(), enc.Header(), nil
}

// unsafeWindowError refuses a window (see checkWindow); its first safe
// inputs can be merged.
type unsafeWindowError struct {
	err  error
	safe int
}

func (e *unsafeWindowError) Error() string { return e.err.Error() }
func (e *unsafeWindowError) Unwrap() error { return e.err }

// safePrefix returns the length of the longest prefix of a refused window
// that merges exactly (at least 1: one file is its own merge).
func safePrefix(sums []ltxSummary) int {
	for n := len(sums) - 1; n > 1; n-- {
		if checkWindow(sums[:n]) == nil {
			return n
		}
	}
	return 1
}

// checkSnapshot verifies that an LTX file holding a whole database (every
// page up to Commit, or zeros where none is stored) has the post-apply
// checksum its trailer promises: a snapshot replaces history, so it is
// checked before anything relies on it.
func checkSnapshot(data []byte) error {
	h := ltx.NewHasher()
	sum := ltx.ChecksumFlag
	var zero []byte
	next := uint32(1) // pages below next are summed
	zeros := func(upto, lock uint32) {
		for ; next < upto; next++ {
			if next != lock {
				sum = ltx.ChecksumFlag | (sum ^ ltx.ChecksumPageWithHasher(h, next, zero))
			}
		}
	}
	s, err := decodeAll(data, func(hdr ltx.Header, pgno uint32, page []byte) {
		if zero == nil {
			zero = make([]byte, hdr.PageSize)
		}
		if pgno > hdr.Commit {
			return
		}
		zeros(pgno, ltx.LockPgno(hdr.PageSize))
		sum = ltx.ChecksumFlag | (sum ^ ltx.ChecksumPageWithHasher(h, pgno, page))
		next = pgno + 1
	})
	if err != nil {
		return err
	}
	if zero == nil {
		zero = make([]byte, s.hdr.PageSize)
	}
	zeros(s.hdr.Commit+1, ltx.LockPgno(s.hdr.PageSize))
	if want := s.trailer.PostApplyChecksum; sum != want {
		return fmt.Errorf("snapshot of txids 1 through %s has checksum %s, not %s", s.hdr.MaxTXID, sum, want)
	}
	return nil
}
