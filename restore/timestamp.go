package restore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"time"

	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// TXIDAt returns the newest TXID of database db committed at or before t,
// by the commit time in the LTX headers of its level-0 files. Commit times
// come from one clock and grow with the TXID, so it reads the headers of
// O(log n) files, not all of them.
//
// Retention trims level 0 to a recent window; for a time before its first
// file, TXIDAt looks at the files of the levels above (compactions and
// snapshots, whose header time is the commit time of their last TXID) and
// returns the newest TXID one of them ends at that a restore can reach.
//
// Errors: ErrNoHistory when db has no files; ErrBeforeHistory when the first
// commit still restorable is after t (the message gives its time);
// ErrCorrupt when a header it needs cannot be read.
func TXIDAt(ctx context.Context, r ship.Replica, db string, t time.Time) (ltx.TXID, error) {
	infos, err := r.LTXFiles(ctx, db, 0)
	if err != nil {
		return 0, fmt.Errorf("list history of %s: %w", db, err)
	}
	i, err := searchTime(ctx, r, db, infos, t)
	if err != nil {
		return 0, err
	}
	if i > 0 {
		return infos[i-1].MaxTXID, nil
	}
	return txidAtUpper(ctx, r, db, infos, t)
}

// searchTime returns the index of the first of infos committed after t.
func searchTime(ctx context.Context, r ship.Replica, db string, infos []*ltx.FileInfo, t time.Time) (int, error) {
	var firstErr error
	after := func(i int) bool { // the commit time of infos[i] is after t
		if firstErr != nil {
			return true
		}
		ts, err := commitTime(ctx, r, db, infos[i])
		if err != nil {
			firstErr = err
			return true
		}
		return ts.After(t)
	}
	i := sort.Search(len(infos), after)
	return i, firstErr
}

// txidAtUpper answers TXIDAt for a time before level 0's first file from
// the levels above 0. l0 is level 0's listing.
func txidAtUpper(ctx context.Context, r ship.Replica, db string, l0 []*ltx.FileInfo, t time.Time) (ltx.TXID, error) {
	all := slices.Clone(l0)
	var upper [][]*ltx.FileInfo
	for level := 1; level <= maxLevel; level++ {
		files, err := r.LTXFiles(ctx, db, level)
		if err != nil {
			return 0, fmt.Errorf("list history of %s: %w", db, err)
		}
		all = append(all, files...)
		upper = append(upper, files)
	}
	if len(all) == 0 {
		return 0, errorf(ErrNoHistory, "no history for %s", db)
	}
	reach := map[ltx.TXID]bool{}
	for _, p := range ship.ReachFrom0(all) {
		reach[p] = true
	}
	// Per level, the files ending at a restorable TXID, in TXID order
	// (and so in time order); the newest one at or before t of each.
	var best ltx.TXID
	var earliest *ltx.FileInfo // the first restorable file of all, for the error
	for _, files := range upper {
		var ends []*ltx.FileInfo
		for _, fi := range files {
			if reach[fi.MaxTXID] {
				ends = append(ends, fi)
			}
		}
		slices.SortFunc(ends, func(a, b *ltx.FileInfo) int { return cmp.Compare(a.MaxTXID, b.MaxTXID) })
		if len(ends) == 0 {
			continue
		}
		if earliest == nil || ends[0].MaxTXID < earliest.MaxTXID {
			earliest = ends[0]
		}
		i, err := searchTime(ctx, r, db, ends, t)
		if err != nil {
			return 0, err
		}
		if i > 0 {
			best = max(best, ends[i-1].MaxTXID)
		}
	}
	if best > 0 {
		return best, nil
	}
	first := earliest
	if len(l0) > 0 && (first == nil || l0[0].MaxTXID < first.MaxTXID) {
		first = l0[0]
	}
	if first == nil {
		return 0, errorf(ErrNoHistory, "no restorable history for %s", db)
	}
	ts, err := commitTime(ctx, r, db, first)
	if err != nil {
		return 0, err
	}
	return 0, errorf(ErrBeforeHistory, "no commit of %s at or before %s: its history starts at txid %s, committed %s",
		db, t.UTC().Format(time.RFC3339Nano), first.MaxTXID, ts.Format(time.RFC3339Nano))
}

// commitTime reads the commit time from the header of one file with a
// ranged read of the header alone.
func commitTime(ctx context.Context, r ship.Replica, db string, fi *ltx.FileInfo) (time.Time, error) {
	path := ship.LTXPath(db, fi.Level, fi.MinTXID, fi.MaxTXID)
	rc, err := r.ReadLTXRange(ctx, db, fi.Level, fi.MinTXID, fi.MaxTXID, 0, ltx.HeaderSize)
	if err != nil {
		return time.Time{}, fmt.Errorf("read history of %s: %w", db, err)
	}
	defer rc.Close()
	b := make([]byte, ltx.HeaderSize)
	if _, err := io.ReadFull(rc, b); errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return time.Time{}, errorf(ErrCorrupt, "%s: corrupt LTX file: header: %v", path, err)
	} else if err != nil {
		return time.Time{}, fmt.Errorf("read %s: %w", path, err)
	}
	var hdr ltx.Header
	if err := hdr.UnmarshalBinary(b); err != nil {
		return time.Time{}, errorf(ErrCorrupt, "%s: corrupt LTX file: header: %v", path, err)
	}
	if hdr.MinTXID != fi.MinTXID || hdr.MaxTXID != fi.MaxTXID {
		return time.Time{}, errorf(ErrCorrupt, "%s: corrupt LTX file: header holds txids %s through %s", path, hdr.MinTXID, hdr.MaxTXID)
	}
	return time.UnixMilli(hdr.Timestamp).UTC(), nil
}
