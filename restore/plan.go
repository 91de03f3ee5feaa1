package restore

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// Plan returns the files that rebuild database db at target, oldest first: a
// chain whose first file starts at TXID 1 and whose last file ends at target,
// each file starting right after the previous one ends. Target 0 means the
// latest TXID in the history.
//
// The files may come from any level: a snapshot (level 9, TXIDs 1 through N),
// compactions (levels 1 to 8) and single commits (level 0). Among all chains
// Plan picks one with the fewest files (then the fewest bytes), so a restore
// after a million commits reads one snapshot, a few compacted files and the
// level-0 files past the last compaction.
//
// The returned FileInfos hold only what the replica listing knows (Level,
// MinTXID, MaxTXID, Size, CreatedAt); checksums are in the files themselves
// and are checked by Restore as it reads them.
//
// Errors: ErrNoHistory when db has no files; ErrTXIDNotFound when target is
// past the end (the message names the last TXID available) or is not the end
// of any chain, because it falls inside a file that merges several
// transactions and the single commits around it are no longer kept (the
// message names the nearest TXIDs that can be restored); ErrGap when no chain
// reaches target and part of the history has no file (the message names the
// range).
func Plan(ctx context.Context, r ship.Replica, db string, target ltx.TXID) ([]*ltx.FileInfo, error) {
	upper, err := listUpper(ctx, r, db)
	if err != nil {
		return nil, err
	}
	// Level 0 is by far the largest level. Only the part past what the
	// upper levels reach is needed, and none past target, unless they leave
	// a hole below it; a replica that can seek lists just that part.
	reach := ship.ReachFrom0(upper)
	var after ltx.TXID
	var l0 []*ltx.FileInfo
	if target != 0 {
		after = lastAtOrBelow(reach, target)
		l0, err = ship.LTXFilesBetween(ctx, r, db, 0, after, target)
	} else {
		if len(reach) > 0 {
			after = reach[len(reach)-1]
		}
		l0, err = ship.LTXFilesAfter(ctx, r, db, 0, after)
	}
	if err != nil {
		return nil, fmt.Errorf("list history of %s: %w", db, err)
	}
	plan, err := planFiles(db, append(upper, l0...), target)
	if err == nil || (after == 0 && target == 0) {
		return plan, err
	}
	// The upper levels did not lead to target through that cut (or the
	// error needs what lies past target to say what is missing): plan
	// again with all of level 0.
	if l0, err = r.LTXFiles(ctx, db, 0); err != nil {
		return nil, fmt.Errorf("list history of %s: %w", db, err)
	}
	return planFiles(db, append(upper, l0...), target)
}

// listUpper lists every level above 0, all at once: from S3 each is a
// request, and one after another they were a tenth of a mount's time.
func listUpper(ctx context.Context, r ship.Replica, db string) ([]*ltx.FileInfo, error) {
	var wg sync.WaitGroup
	levels := make([][]*ltx.FileInfo, maxLevel+1)
	errs := make([]error, maxLevel+1)
	for level := 1; level <= maxLevel; level++ {
		wg.Go(func() {
			levels[level], errs[level] = r.LTXFiles(ctx, db, level)
		})
	}
	wg.Wait()
	var all []*ltx.FileInfo
	for level := 1; level <= maxLevel; level++ {
		if errs[level] != nil {
			return nil, fmt.Errorf("list history of %s: %w", db, errs[level])
		}
		all = append(all, levels[level]...)
	}
	return all, nil
}

// planFiles finds the shortest chain from TXID 1 to target among infos.
func planFiles(db string, infos []*ltx.FileInfo, target ltx.TXID) ([]*ltx.FileInfo, error) {
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
	if plan := shortestChain(infos, target); plan != nil {
		return plan, nil
	}
	// No chain ends at target. Either a merged file swallows it, or a
	// range of TXIDs has no file at all.
	reach := ship.ReachFrom0(infos)
	if len(reach) > 0 && reach[len(reach)-1] >= target {
		return nil, notRestorable(db, target, reach, infos)
	}
	return nil, gapError(db, infos, reach)
}

// shortestChain returns the chain from 1 to target with the fewest files
// (then bytes), or nil. Positions are TXIDs a chain can end at; every file
// is an edge from MinTXID-1 to MaxTXID, so edges only go forward and one
// pass over the positions in ascending order settles each of them.
func shortestChain(infos []*ltx.FileInfo, target ltx.TXID) []*ltx.FileInfo {
	from := map[ltx.TXID][]*ltx.FileInfo{} // MinTXID-1 -> files
	positions := []ltx.TXID{0}
	for _, fi := range infos {
		if fi.MinTXID >= 1 && fi.MinTXID <= fi.MaxTXID && fi.MaxTXID <= target {
			from[fi.MinTXID-1] = append(from[fi.MinTXID-1], fi)
			positions = append(positions, fi.MaxTXID)
		}
	}
	slices.Sort(positions)
	positions = slices.Compact(positions)
	type best struct {
		files int
		bytes int64
		via   *ltx.FileInfo
	}
	dist := map[ltx.TXID]best{0: {}}
	for _, p := range positions {
		d, ok := dist[p]
		if !ok {
			continue
		}
		for _, fi := range from[p] {
			nd := best{d.files + 1, d.bytes + fi.Size, fi}
			old, seen := dist[fi.MaxTXID]
			if !seen || nd.files < old.files || (nd.files == old.files && nd.bytes < old.bytes) {
				dist[fi.MaxTXID] = nd
			}
		}
	}
	if _, ok := dist[target]; !ok {
		return nil
	}
	var plan []*ltx.FileInfo
	for p := target; p != 0; {
		fi := dist[p].via
		plan = append(plan, fi)
		p = fi.MinTXID - 1
	}
	slices.Reverse(plan)
	return plan
}

// lastAtOrBelow returns the largest element of sorted s that is <= t, or 0.
func lastAtOrBelow(s []ltx.TXID, t ltx.TXID) ltx.TXID {
	i, found := slices.BinarySearch(s, t)
	if found {
		return t
	}
	if i == 0 {
		return 0
	}
	return s[i-1]
}

// notRestorable explains a target inside merged history and names the
// restorable TXIDs on either side of it.
func notRestorable(db string, target ltx.TXID, reach []ltx.TXID, infos []*ltx.FileInfo) error {
	below := lastAtOrBelow(reach, target)
	i, _ := slices.BinarySearch(reach, target)
	above := reach[i]
	// The file that jumps over target, for the message.
	var over *ltx.FileInfo
	for _, fi := range infos {
		if fi.MinTXID-1 == below && fi.MaxTXID == above {
			if over == nil || fi.Level < over.Level {
				over = fi
			}
		}
	}
	near := above.String()
	if below > 0 {
		near = below.String() + " or " + near
	}
	if over == nil {
		return errorf(ErrTXIDNotFound, "txid %s not found: it lies inside merged history (restorable here: txid %s)", target, near)
	}
	return errorf(ErrTXIDNotFound, "txid %s not found: %s merges txids %s through %s into one state (restorable here: txid %s)",
		target, ship.LTXPath(db, over.Level, over.MinTXID, over.MaxTXID), over.MinTXID, over.MaxTXID, near)
}

// gapError names the first range of TXIDs after what chains reach that no
// file starts in.
func gapError(db string, infos []*ltx.FileInfo, reach []ltx.TXID) error {
	var end ltx.TXID // furthest position chains reach
	if len(reach) > 0 {
		end = reach[len(reach)-1]
	}
	next := end + 1
	var first ltx.TXID // lowest MinTXID past next
	for _, fi := range infos {
		if fi.MinTXID > next && (first == 0 || fi.MinTXID < first) {
			first = fi.MinTXID
		}
	}
	if first != 0 {
		return errorf(ErrGap, "history of %s is missing txids %s through %s", db, next, first-1)
	}
	return errorf(ErrGap, "history of %s has no file starting at txid %s", db, next)
}
