package ship

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/superfly/ltx"
)

// Checking merged files. A merged LTX file (a compaction, a snapshot, a
// backlog merge) replaces the files it was made from, and retention later
// deletes those, so it is checked before it is stored: its own checksum, its
// TXID range, and the checksum chain it continues. A window ltx.Compactor
// cannot merge exactly is refused before it is merged.

// ErrUnsafeWindow is returned for inputs a merge would not reproduce
// exactly: the database shrank inside the window and a page past the
// shrink is not written again afterwards, so the merged file would carry
// that page's old content where replaying the inputs gives zeros.
var ErrUnsafeWindow = errors.New("merging these commits would not reproduce them")

// ltxSummary is what checking a merge needs from one LTX file.
type ltxSummary struct {
	hdr     ltx.Header
	trailer ltx.Trailer
	pgnos   []uint32 // pages it holds, ascending
}

// readSummary decodes an LTX file completely, which verifies its file
// checksum, and returns its header, trailer and page numbers.
func readSummary(data []byte) (ltxSummary, error) {
	return decodeAll(data, nil)
}

// decodeAll decodes an LTX file completely, calling page (if set) for each
// page in file order, and returns its summary.
func decodeAll(data []byte, page func(hdr ltx.Header, pgno uint32, data []byte)) (ltxSummary, error) {
	dec := ltx.NewDecoder(bytes.NewReader(data))
	if err := dec.DecodeHeader(); err != nil {
		return ltxSummary{}, err
	}
	s := ltxSummary{hdr: dec.Header()}
	buf := make([]byte, s.hdr.PageSize)
	var ph ltx.PageHeader
	for {
		err := dec.DecodePage(&ph, buf)
		if err == io.EOF {
			break
		} else if err != nil {
			return ltxSummary{}, err
		}
		s.pgnos = append(s.pgnos, ph.Pgno)
		if page != nil {
			page(s.hdr, ph.Pgno, buf)
		}
	}
	if err := dec.Close(); err != nil {
		return ltxSummary{}, err
	}
	s.trailer = dec.Trailer()
	return s, nil
}

// checkWindow refuses inputs (oldest first, already summarised) whose
// merge would differ from replaying them: for every page up to the last
// input's size, if some input shrank the database below it, a later input
// must write it again. sqlfs's capture writes every page from the old end
// to the new end when a database grows, so its histories pass; the check
// guards against histories written otherwise.
func checkWindow(inputs []ltxSummary) error {
	final := inputs[len(inputs)-1].hdr.Commit
	lock := ltx.LockPgno(inputs[0].hdr.PageSize)
	written := map[uint32]bool{} // pages written by the inputs after the current one
	// Pages past upto were checked against a later input, whose successors
	// are a subset of this one's.
	upto := final
	for i := len(inputs) - 1; i >= 0; i-- {
		in := inputs[i]
		for p := in.hdr.Commit + 1; p <= upto; p++ {
			if p != lock && !written[p] {
				return fmt.Errorf("%w: txid %s shrinks the database to %d pages and page %d is not written again by txid %s",
					ErrUnsafeWindow, in.hdr.MaxTXID, in.hdr.Commit, p, inputs[len(inputs)-1].hdr.MaxTXID)
			}
		}
		upto = min(upto, in.hdr.Commit)
		for _, p := range in.pgnos {
			written[p] = true
		}
	}
	return nil
}

// checkMerged verifies a merged file against its inputs' summaries: it
// decodes completely (file checksum), covers exactly the inputs' TXIDs, has
// the last input's size, starts from the first input's pre-apply checksum
// and ends at the last input's post-apply checksum.
func checkMerged(data []byte, first, last ltxSummary) error {
	out, err := readSummary(data)
	if err != nil {
		return fmt.Errorf("merged file does not decode: %w", err)
	}
	return checkEnds(out, first.hdr.MinTXID, last.hdr.MaxTXID, first.hdr.PreApplyChecksum, last.trailer.PostApplyChecksum, last.hdr.Commit)
}

// checkEnds compares a merged file's summary with what it must be.
func checkEnds(out ltxSummary, minTXID, maxTXID ltx.TXID, pre, post ltx.Checksum, commit uint32) error {
	switch {
	case out.hdr.MinTXID != minTXID || out.hdr.MaxTXID != maxTXID:
		return fmt.Errorf("merged file holds txids %s through %s, not %s through %s", out.hdr.MinTXID, out.hdr.MaxTXID, minTXID, maxTXID)
	case out.hdr.PreApplyChecksum != pre:
		return fmt.Errorf("merged file of txids %s through %s has pre-apply checksum %s, not %s", minTXID, maxTXID, out.hdr.PreApplyChecksum, pre)
	case out.trailer.PostApplyChecksum != post:
		return fmt.Errorf("merged file of txids %s through %s has post-apply checksum %s, not %s", minTXID, maxTXID, out.trailer.PostApplyChecksum, post)
	case out.hdr.Commit != commit:
		return fmt.Errorf("merged file of txids %s through %s has %d pages, not %d", minTXID, maxTXID, out.hdr.Commit, commit)
	}
	return nil
}
