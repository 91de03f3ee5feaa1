package ship

import (
	"context"
	"fmt"
	"io"
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
	// The position is where a restore of the latest state gets to: from 1,
	// each step takes the file reaching furthest among those starting right
	// after the previous one (merged files included).
	reach := map[ltx.TXID]ltx.TXID{}
	for _, f := range files {
		reach[f.MinTXID] = max(reach[f.MinTXID], f.MaxTXID)
	}
	pos, last := ltx.TXID(0), ltx.TXID(0)
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
	if pos > 0 {
		if err := u.sameFile(ctx, db, txRange{last, pos}); err != nil {
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

// sameFile checks that the replica's file for r ends in the same state as
// local history at r.max (equal post-apply checksums).
func (u *Uploader) sameFile(ctx context.Context, db string, r txRange) error {
	local, err := u.store.ReadLTX(db, r.max, r.max)
	if err != nil {
		return fmt.Errorf("local history of %s at %s: %w", db, r.max, err)
	}
	return u.sameAs(ctx, db, r, postApply(local))
}

// sameAs checks that the replica's file for r has post-apply checksum want.
func (u *Uploader) sameAs(ctx context.Context, db string, r txRange, want ltx.Checksum) error {
	name := LTXPath(db, 0, r.min, r.max)
	rc, err := u.replica.OpenLTX(ctx, db, 0, r.min, r.max)
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

// postApply is the post-apply checksum in an LTX file's trailer (0 when the
// file is too short to have one).
func postApply(b []byte) ltx.Checksum {
	var t ltx.Trailer
	if len(b) < ltx.TrailerSize || t.UnmarshalBinary(b[len(b)-ltx.TrailerSize:]) != nil {
		return 0
	}
	return t.PostApplyChecksum
}
