package ship

import (
	"slices"
	"time"

	"github.com/superfly/ltx"
)

// expired returns the files retention removes from one database's history.
// files[level] lists each level (ordered by MinTXID, then MaxTXID), now is
// the time of the pass, and level-0 files ending past keep always stay (the
// local store passes what the replica has not shipped or compacted yet).
//
// The rules never leave a gap: every TXID that could be restored before and
// that is still within retention can be restored after, and the newest file
// of every level stays (the pager starts from the newest level-0 file).
//
//   - Snapshots: the base is the newest snapshot taken at or before
//     now-Retention; older snapshots go. Without such a snapshot nothing
//     older than a snapshot is cut.
//   - Levels 1 to 8: files ending at or below the base snapshot go; the
//     base snapshot holds that state.
//   - Level 0: a commit stays individually restorable for RetentionL0. A
//     level-0 file goes only if every level-0 file up to it is older than
//     that and it ends at or below C, the furthest TXID the remaining higher
//     levels reach from TXID 0 without passing the old prefix (so C is where
//     the kept level-0 files take over, and it is restorable).
func expired(files *[SnapshotLevel + 1][]*ltx.FileInfo, cfg Levels, now time.Time, keep ltx.TXID) []*ltx.FileInfo {
	var out []*ltx.FileInfo
	kept := *files

	// Snapshots and the levels they replace.
	snaps := files[SnapshotLevel]
	base := -1
	cutoff := now.Add(-cfg.Retention)
	for i, s := range snaps {
		if !s.CreatedAt.After(cutoff) {
			base = i
		}
	}
	if base >= 0 {
		out = append(out, snaps[:base]...)
		kept[SnapshotLevel] = snaps[base:]
		s := snaps[base].MaxTXID
		for level := 1; level < SnapshotLevel; level++ {
			var keepLevel []*ltx.FileInfo
			for i, fi := range files[level] {
				if fi.MaxTXID <= s && i < len(files[level])-1 {
					out = append(out, fi)
				} else {
					keepLevel = append(keepLevel, fi)
				}
			}
			kept[level] = keepLevel
		}
	}

	// Level 0: the old prefix, cut at a TXID the higher levels reach.
	l0 := files[0]
	cutoff0 := now.Add(-cfg.RetentionL0)
	var limit ltx.TXID // end of the prefix of level-0 files older than cutoff0
	for _, fi := range l0 {
		if fi.CreatedAt.After(cutoff0) {
			break
		}
		limit = fi.MaxTXID
	}
	limit = min(limit, keep)
	var upper []*ltx.FileInfo
	for level := 1; level <= SnapshotLevel; level++ {
		upper = append(upper, kept[level]...)
	}
	var c ltx.TXID
	for _, p := range ReachFrom0(upper) {
		if p <= limit {
			c = p
		}
	}
	for i, fi := range l0 {
		if fi.MaxTXID <= c && i < len(l0)-1 {
			out = append(out, fi)
		}
	}
	return out
}

// ReachFrom0 returns, ascending, every TXID a chain of files from TXID 1
// ends at: the states those files can rebuild.
func ReachFrom0(infos []*ltx.FileInfo) []ltx.TXID {
	byMin := slices.Clone(infos)
	slices.SortFunc(byMin, cmpInfo)
	seen := map[ltx.TXID]bool{0: true}
	var out []ltx.TXID
	for _, fi := range byMin {
		if fi.MinTXID >= 1 && seen[fi.MinTXID-1] && !seen[fi.MaxTXID] {
			seen[fi.MaxTXID] = true
			out = append(out, fi.MaxTXID)
		}
	}
	slices.Sort(out)
	return out
}
