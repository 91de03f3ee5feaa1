package ship

import (
	"context"
	"fmt"

	"github.com/superfly/ltx"
)

// Merging is how the uploader catches up: when a database's backlog passes a
// bound, or the PUT rate would pass its cap, the commits waiting for the
// replica go up as one level-0 LTX file covering min..max instead of one file
// each. The merged file holds the newest version of every page any of them
// wrote, the pre-apply checksum of the first and the post-apply checksum of
// the last, so the checksum chain of the replica stays whole; the TXIDs
// strictly inside the range are no longer restorable from the replica (they
// still are from the local store).

// Limits of one merged file: a backlog larger than this goes up as several.
const (
	mergeMaxFiles = 20000
	mergeMaxBytes = 64 << 20
)

// mergeLocal reads the stored commits minTXID..maxTXID of db, stopping early
// once mergeMaxBytes are read, and merges them into one LTX file. It returns
// the file and the last TXID it covers (maxTXID unless it stopped early).
func mergeLocal(ctx context.Context, store *Store, db string, minTXID, maxTXID ltx.TXID) ([]byte, ltx.TXID, error) {
	var inputs [][]byte
	total := 0
	hi := minTXID - 1
	for txid := minTXID; txid <= maxTXID && total < mergeMaxBytes; txid++ {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		data, err := store.ReadLTX(db, txid, txid)
		if err != nil {
			return nil, 0, err
		}
		inputs = append(inputs, data)
		total += len(data)
		hi = txid
	}
	out, _, err := compactLTX(ctx, inputs)
	if err != nil {
		return nil, 0, fmt.Errorf("merge %s: %w", LTXPath(db, 0, minTXID, hi), err)
	}
	return out, hi, nil
}
