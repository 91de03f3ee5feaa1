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

// compactLTX merges LTX files whose TXIDs chain (oldest first) into one
// with ltx.Compactor: the newest version of each page, the first file's
// pre-apply checksum and the last file's post-apply checksum and commit
// time. Every input is decoded and verified first, a window the Compactor
// would not merge exactly is refused (ErrUnsafeWindow), and the result is
// verified against the inputs (see checkMerged) before it is returned.
func compactLTX(ctx context.Context, inputs [][]byte) ([]byte, ltx.Header, error) {
	sums := make([]ltxSummary, len(inputs))
	rdrs := make([]io.Reader, len(inputs))
	for i, b := range inputs {
		var err error
		if sums[i], err = readSummary(b); err != nil {
			return nil, ltx.Header{}, fmt.Errorf("input %d: %w", i, err)
		}
		if i > 0 && sums[i].hdr.PreApplyChecksum != sums[i-1].trailer.PostApplyChecksum {
			return nil, ltx.Header{}, fmt.Errorf("txid %s does not continue txid %s: checksum chain broken", sums[i].hdr.MinTXID, sums[i-1].hdr.MaxTXID)
		}
		rdrs[i] = bytes.NewReader(b)
	}
	if err := checkWindow(sums); err != nil {
		return nil, ltx.Header{}, err
	}
	var out bytes.Buffer
	c, err := ltx.NewCompactor(&out, rdrs)
	if err != nil {
		return nil, ltx.Header{}, err
	}
	defer c.Cleanup()
	if err := c.Compact(ctx); err != nil {
		return nil, ltx.Header{}, err
	}
	if err := checkMerged(out.Bytes(), sums[0], sums[len(sums)-1]); err != nil {
		return nil, ltx.Header{}, err
	}
	return out.Bytes(), c.Header(), nil
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
