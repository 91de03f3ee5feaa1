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
// time. Each input's own checksum is verified as it is read.
func compactLTX(ctx context.Context, inputs [][]byte) ([]byte, ltx.Header, error) {
	rdrs := make([]io.Reader, len(inputs))
	for i, b := range inputs {
		rdrs[i] = bytes.NewReader(b)
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
	return out.Bytes(), c.Header(), nil
}

// checkSnapshot verifies that an LTX file holding a whole database (every
// page up to Commit, or zeros where none is stored) has the post-apply
// checksum its trailer promises: a snapshot replaces history, so it is
// checked before anything relies on it.
func checkSnapshot(data []byte) error {
	dec := ltx.NewDecoder(bytes.NewReader(data))
	if err := dec.DecodeHeader(); err != nil {
		return err
	}
	hdr := dec.Header()
	page := make([]byte, hdr.PageSize)
	zero := make([]byte, hdr.PageSize)
	h := ltx.NewHasher()
	lock := ltx.LockPgno(hdr.PageSize)
	sum := ltx.ChecksumFlag
	next := uint32(1) // pages below next are summed
	zeros := func(upto uint32) {
		for ; next < upto; next++ {
			if next != lock {
				sum = ltx.ChecksumFlag | (sum ^ ltx.ChecksumPageWithHasher(h, next, zero))
			}
		}
	}
	var ph ltx.PageHeader
	for {
		err := dec.DecodePage(&ph, page)
		if err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		if ph.Pgno > hdr.Commit {
			continue
		}
		zeros(ph.Pgno)
		sum = ltx.ChecksumFlag | (sum ^ ltx.ChecksumPageWithHasher(h, ph.Pgno, page))
		next = ph.Pgno + 1
	}
	zeros(hdr.Commit + 1)
	if err := dec.Close(); err != nil {
		return err
	}
	if want := dec.Trailer().PostApplyChecksum; sum != want {
		return fmt.Errorf("snapshot of txids 1 through %s has checksum %s, not %s", hdr.MaxTXID, sum, want)
	}
	return nil
}
