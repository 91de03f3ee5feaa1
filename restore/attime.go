package restore

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// TXIDAt returns the last TXID of db committed at or before t, and its
// commit time (from the LTX header of the level-0 file that ends there).
//
// Commit times ascend with TXIDs (sqlfs stamps each commit as it captures
// it), so TXIDAt binary-searches the files by their last TXID and reads
// about log2(files) headers, with 100-byte ranged reads. A time before the
// first commit is ErrTXIDNotFound, with the message naming when history
// starts; a time after the last commit gives the last TXID.
func TXIDAt(ctx context.Context, r ship.Replica, db string, t time.Time) (ltx.TXID, time.Time, error) {
	infos, err := r.LTXFiles(ctx, db, 0)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("list history of %s: %w", db, err)
	}
	if len(infos) == 0 {
		return 0, time.Time{}, errorf(ErrNoHistory, "no history for %s", db)
	}
	// One candidate per TXID a file ends at: states the history can rebuild.
	slices.SortStableFunc(infos, func(a, b *ltx.FileInfo) int { return cmp.Compare(a.MaxTXID, b.MaxTXID) })
	infos = slices.CompactFunc(infos, func(a, b *ltx.FileInfo) bool { return a.MaxTXID == b.MaxTXID })

	var firstErr error
	commitTime := func(fi *ltx.FileInfo) (time.Time, bool) {
		b := make([]byte, ltx.HeaderSize)
		var hdr ltx.Header
		if err := r.ReadLTXAt(ctx, db, fi.Level, fi.MinTXID, fi.MaxTXID, b, 0); err != nil {
			firstErr = fmt.Errorf("read %s: %w", ship.LTXPath(db, fi.Level, fi.MinTXID, fi.MaxTXID), err)
			return time.Time{}, false
		}
		if err := hdr.UnmarshalBinary(b); err != nil || hdr.Validate() != nil || hdr.MaxTXID != fi.MaxTXID {
			firstErr = errorf(ErrCorrupt, "%s: corrupt LTX header", ship.LTXPath(db, fi.Level, fi.MinTXID, fi.MaxTXID))
			return time.Time{}, false
		}
		return time.UnixMilli(hdr.Timestamp).UTC(), true
	}
	// Find the first candidate committed after t.
	lo, hi := 0, len(infos)
	var found time.Time
	for lo < hi {
		mid := (lo + hi) / 2
		ct, ok := commitTime(infos[mid])
		if !ok {
			return 0, time.Time{}, firstErr
		}
		if ct.After(t) {
			hi = mid
		} else {
			lo, found = mid+1, ct
		}
	}
	if lo == 0 {
		start, ok := commitTime(infos[0])
		if !ok {
			return 0, time.Time{}, firstErr
		}
		return 0, time.Time{}, errorf(ErrTXIDNotFound, "no commit of %s at or before %s: its history starts at %s (txid %s)",
			db, ltx.FormatTimestamp(t.UTC()), ltx.FormatTimestamp(start), infos[0].MaxTXID)
	}
	return infos[lo-1].MaxTXID, found, nil
}
