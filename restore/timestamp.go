package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
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
// Errors: ErrNoHistory when db has no files; ErrBeforeHistory when the first
// commit is after t (the message gives its time); ErrCorrupt when a header
// it needs cannot be read.
func TXIDAt(ctx context.Context, r ship.Replica, db string, t time.Time) (ltx.TXID, error) {
	infos, err := r.LTXFiles(ctx, db, 0)
	if err != nil {
		return 0, fmt.Errorf("list history of %s: %w", db, err)
	}
	if len(infos) == 0 {
		return 0, errorf(ErrNoHistory, "no history for %s", db)
	}
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
	i := sort.Search(len(infos), after) // the first file committed after t
	if firstErr != nil {
		return 0, firstErr
	}
	if i == 0 {
		first, err := commitTime(ctx, r, db, infos[0])
		if err != nil {
			return 0, err
		}
		return 0, errorf(ErrBeforeHistory, "no commit of %s at or before %s: its history starts at txid %s, committed %s",
			db, t.UTC().Format(time.RFC3339Nano), infos[0].MinTXID, first.Format(time.RFC3339Nano))
	}
	return infos[i-1].MaxTXID, nil
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
