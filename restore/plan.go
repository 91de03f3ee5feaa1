package restore

import (
	"context"
	"fmt"

	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// Plan returns the level-0 files that rebuild database db at target, oldest
// first: a contiguous run whose first file starts at TXID 1 and whose last
// file ends at target. Target 0 means the latest TXID in the history.
//
// The returned FileInfos hold only what the replica listing knows (Level,
// MinTXID, MaxTXID, Size, CreatedAt); checksums are in the files themselves
// and are checked by Restore as it reads them.
//
// Errors: ErrNoHistory when db has no files; ErrTXIDNotFound when target is
// past the end (the message names the last TXID available) or falls inside a
// file that merges several transactions; ErrGap when a TXID range before
// target has no file (the message names the range).
func Plan(ctx context.Context, r ship.Replica, db string, target ltx.TXID) ([]*ltx.FileInfo, error) {
	infos, err := r.LTXFiles(ctx, db, 0)
	if err != nil {
		return nil, fmt.Errorf("list history of %s: %w", db, err)
	}
	if len(infos) == 0 {
		return nil, errorf(ErrNoHistory, "no history for %s", db)
	}
	var last ltx.TXID
	for _, fi := range infos {
		last = max(last, fi.MaxTXID)
	}
	if target == 0 {
		target = last
	}
	if target > last {
		return nil, errorf(ErrTXIDNotFound, "txid %s not found: history of %s ends at %s", target, db, last)
	}

	// The listing is ordered by MinTXID, then MaxTXID. At each step take,
	// among the files starting right after what the plan covers, the one
	// reaching furthest without passing target. Files starting inside the
	// covered range overlap it and are skipped.
	var plan []*ltx.FileInfo
	var covered ltx.TXID
	i := 0
	for covered < target {
		next := covered + 1
		var pick, overshoot *ltx.FileInfo
		for ; i < len(infos) && infos[i].MinTXID <= next; i++ {
			fi := infos[i]
			if fi.MinTXID != next {
				continue
			}
			if fi.MaxTXID <= target {
				pick = fi
			} else if overshoot == nil {
				overshoot = fi
			}
		}
		switch {
		case pick != nil:
			plan = append(plan, pick)
			covered = pick.MaxTXID
		case overshoot != nil:
			nearest := overshoot.MaxTXID.String()
			if covered > 0 {
				nearest = covered.String() + " or " + nearest
			}
			return nil, errorf(ErrTXIDNotFound, "txid %s not found: %s merges txids %s through %s into one state (restorable here: txid %s)",
				target, ship.LTXPath(db, 0, overshoot.MinTXID, overshoot.MaxTXID), overshoot.MinTXID, overshoot.MaxTXID, nearest)
		case i < len(infos):
			return nil, errorf(ErrGap, "history of %s is missing txids %s through %s", db, next, infos[i].MinTXID-1)
		default:
			return nil, errorf(ErrGap, "history of %s has no file starting at txid %s", db, next)
		}
	}
	return plan, nil
}
