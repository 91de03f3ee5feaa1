package ship

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/superfly/ltx"
)

// Resuming: where a replica's history of a database ends, and whether that
// end is the same state as local history there. A replica that holds
// another history is never written to.

// Start resumes shipping db: it reads the replica's position and checks that
// the replica's file ending there agrees with local history.
func (u *Uploader) Start(ctx context.Context, db string, localLast ltx.TXID) error {
	files, err := u.replica.LTXFiles(ctx, db, 0)
	if err != nil {
		return fmt.Errorf("replica %s: list %s: %w", u.replica, db, err)
	}
	// Retention removes level-0 files the levels above have merged, so
	// unless level 0 still starts at TXID 1 the walk starts where those
	// reach (upper is the file ending there).
	var start ltx.TXID
	var upper *ltx.FileInfo
	if len(files) == 0 || files[0].MinTXID != 1 {
		if start, upper, err = compactedEnd(ctx, u.replica, db); err != nil {
			return fmt.Errorf("replica %s: list %s: %w", u.replica, db, err)
		}
	}
	// The position is where a restore of the latest state gets to: from
	// start, each step takes the level-0 file reaching furthest among those
	// starting right after the previous one (merged files included).
	reach := map[ltx.TXID]ltx.TXID{}
	for _, f := range files {
		reach[f.MinTXID] = max(reach[f.MinTXID], f.MaxTXID)
	}
	pos, last := start, ltx.TXID(0)
	for reach[pos+1] > pos {
		last = pos + 1
		pos = reach[pos+1]
	}
	// A replica that is ahead of local history, or that disagrees with it
	// at its position, belongs to another history.
	if pos > localLast {
		return fmt.Errorf("%w: replica %s has %s up to txid %s, local history ends at %s",
			ErrDiverged, u.replica, db, pos, localLast)
	}
	switch {
	case last > 0:
		if err := u.sameFile(ctx, db, 0, txRange{last, pos}); err != nil {
			return err
		}
	case upper != nil:
		if err := u.sameFile(ctx, db, upper.Level, txRange{upper.MinTXID, upper.MaxTXID}); err != nil {
			return err
		}
	}
	// Files past a gap (uploaded out of order before a crash) are put
	// again: ErrExists and a comparison accept them.
	u.mu.Lock()
	st := u.dbs[db]
	if st == nil {
		st = &shipState{name: db}
		u.dbs[db] = st
	}
	st.pos, st.next, st.done, st.todo, st.starting = pos, pos+1, map[ltx.TXID]ltx.TXID{}, nil, false
	st.local = max(st.local, localLast)
	if len(st.commits) == 0 && st.local > pos {
		// Commits of a previous run: their age is not known here.
		st.commits = append(st.commits, commitTime{pos + 1, time.Now()})
	}
	u.mu.Unlock()
	u.changed.Broadcast()
	if localLast > pos {
		u.log.Info("shipping backlog", "db", db, "replica", u.replica.String(), "from", pos+1, "to", localLast)
	}
	return nil
}

// sameFile checks that the replica's file of level for r ends in the same
// state as local history at r.max (equal post-apply checksums). Local
// history may have merged and trimmed that commit too: then the local file
// of the same level and range stands in for it, and if neither is left
// there is nothing to compare.
func (u *Uploader) sameFile(ctx context.Context, db string, level int, r txRange) error {
	local, err := u.store.ReadLTX(db, r.max, r.max)
	if errors.Is(err, ErrNotFound) && level > 0 {
		local, err = os.ReadFile(filepath.Join(u.store.Root, LTXPath(db, level, r.min, r.max)))
		if errors.Is(err, fs.ErrNotExist) {
			u.log.Info("resuming after compacted history the data dir no longer holds", "db", db, "txid", r.max, "replica", u.replica.String())
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("local history of %s at %s: %w", db, r.max, err)
	}
	return u.sameAs(ctx, db, level, r, postApply(local))
}

// sameAs checks that the replica's file of level for r has post-apply
// checksum want.
func (u *Uploader) sameAs(ctx context.Context, db string, level int, r txRange, want ltx.Checksum) error {
	name := LTXPath(db, level, r.min, r.max)
	rc, err := u.replica.OpenLTX(ctx, db, level, r.min, r.max)
	if err != nil {
		return fmt.Errorf("replica %s: read %s: %w", u.replica, name, err)
	}
	remote, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return fmt.Errorf("replica %s: read %s: %w", u.replica, name, err)
	}
	if got := postApply(remote); got == 0 || got != want {
		return fmt.Errorf("%w: %s at txid %s in replica %s (refusing to overwrite it; point -replica elsewhere or restore from it)",
			ErrDiverged, db, r.max, u.replica)
	}
	return nil
}

// compactedEnd returns the furthest TXID of db that r's levels above 0
// reach from TXID 1, and the file of the lowest level ending there (nil
// when they reach nothing). The levels are listed at once: a new database's
// first commits wait for this, and a backlog past its bound would merge.
func compactedEnd(ctx context.Context, r Replica, db string) (ltx.TXID, *ltx.FileInfo, error) {
	lists := make([][]*ltx.FileInfo, SnapshotLevel+1)
	errs := make([]error, SnapshotLevel+1)
	var wg sync.WaitGroup
	for level := 1; level <= SnapshotLevel; level++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lists[level], errs[level] = r.LTXFiles(ctx, db, level)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, nil, err
	}
	var upper []*ltx.FileInfo
	for _, files := range lists {
		upper = append(upper, files...)
	}
	reach := ReachFrom0(upper)
	if len(reach) == 0 {
		return 0, nil, nil
	}
	end := reach[len(reach)-1]
	var fi *ltx.FileInfo
	for _, f := range upper {
		if f.MaxTXID == end && (fi == nil || f.Level < fi.Level) {
			fi = f
		}
	}
	return end, fi, nil
}

// postApply is the post-apply checksum in an LTX file's trailer (0 when the
// file is too short to have one).
func postApply(b []byte) ltx.Checksum {
	var t ltx.Trailer
	if len(b) < ltx.TrailerSize || t.UnmarshalBinary(b[len(b)-ltx.TrailerSize:]) != nil {
		return 0
	}
	return t.PostApplyChecksum
}
