package ship

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/superfly/ltx"
)

// ReadLTXAt fills p with the bytes of one LTX file of r from offset off: a
// ranged read, so a reader of a page index or of one page need not fetch the
// whole file. A read cut short (a dropped connection) is resumed once from
// where it stopped. A missing file is ErrNotFound; a file that ends before
// off+len(p) is io.ErrUnexpectedEOF.
func ReadLTXAt(ctx context.Context, r Replica, db string, level int, minTXID, maxTXID ltx.TXID, p []byte, off int64) error {
	done := 0
	for attempt := 0; done < len(p); attempt++ {
		rc, err := r.ReadLTXRange(ctx, db, level, minTXID, maxTXID, off+int64(done), int64(len(p)-done))
		if err != nil {
			return err
		}
		for done < len(p) && err == nil {
			var n int
			n, err = rc.Read(p[done:])
			done += n
		}
		rc.Close()
		switch {
		case done == len(p):
			return nil
		case errors.Is(err, io.EOF):
			return fmt.Errorf("%s: read %d bytes at %d: %w", LTXPath(db, level, minTXID, maxTXID), len(p), off, io.ErrUnexpectedEOF)
		case attempt > 0 || ctx.Err() != nil:
			return fmt.Errorf("%s: read %d bytes at %d: %w", LTXPath(db, level, minTXID, maxTXID), len(p), off, err)
		}
	}
	return nil
}
