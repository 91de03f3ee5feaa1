package restore

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// maxLevel is the highest level a replica uses (9 holds snapshots, as in
// Litestream's layout); List looks at every level from 0 to it.
const maxLevel = 9

// FileEntry describes one LTX file of a database's history.
type FileEntry struct {
	Level   int
	MinTXID ltx.TXID
	MaxTXID ltx.TXID
	Size    int64     // bytes
	Created time.Time // commit time from the LTX header, else the file's modification time; UTC
}

// List returns every LTX file of database db at every level, ordered by
// MinTXID (then level, then MaxTXID). It reads the 100-byte header of each
// file for the commit time. A database without files is ErrNoHistory.
func List(ctx context.Context, r ship.Replica, db string) ([]FileEntry, error) {
	var entries []FileEntry
	for level := 0; level <= maxLevel; level++ {
		infos, err := r.LTXFiles(ctx, db, level)
		if err != nil {
			return nil, fmt.Errorf("list history of %s: %w", db, err)
		}
		for _, fi := range infos {
			created, err := headerTime(ctx, r, db, fi)
			if err != nil {
				return nil, err
			}
			entries = append(entries, FileEntry{
				Level: fi.Level, MinTXID: fi.MinTXID, MaxTXID: fi.MaxTXID,
				Size: fi.Size, Created: created,
			})
		}
	}
	if len(entries) == 0 {
		return nil, errorf(ErrNoHistory, "no history for %s", db)
	}
	sort.SliceStable(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if a.MinTXID != b.MinTXID {
			return a.MinTXID < b.MinTXID
		}
		if a.Level != b.Level {
			return a.Level < b.Level
		}
		return a.MaxTXID < b.MaxTXID
	})
	return entries, nil
}

// headerTime returns the commit time recorded in a file's header. A file
// whose header cannot be read (removed meanwhile, torn, foreign) falls back
// to the time the listing reported: a listing is informational, and restore
// reports such files itself. Only a cancelled context is an error.
func headerTime(ctx context.Context, r ship.Replica, db string, fi *ltx.FileInfo) (time.Time, error) {
	ts, err := commitTime(ctx, r, db, fi)
	if err != nil || ts.UnixMilli() <= 0 {
		return fi.CreatedAt.UTC(), ctx.Err()
	}
	return ts, nil
}
