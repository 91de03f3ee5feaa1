package ship

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/superfly/ltx"
)

// checkRanges reads pieces of one file whose whole content is data,
// including ranges that run past its end or start there.
func checkRanges(t *testing.T, r Replica, db string, level int, minTXID, maxTXID ltx.TXID, data []byte) {
	t.Helper()
	size := int64(len(data))
	for _, c := range []struct{ off, n int64 }{
		{0, -1}, {0, size}, {1, 3}, {size / 2, -1}, {size - 2, 10}, {size, -1}, {size + 10, 2}, {3, 0},
	} {
		end := size
		if c.n >= 0 {
			end = min(c.off+c.n, size)
		}
		want := ""
		if c.off < end {
			want = string(data[c.off:end])
		}
		rc, err := r.ReadLTXRange(context.Background(), db, level, minTXID, maxTXID, c.off, c.n)
		if err != nil {
			t.Fatalf("ReadLTXRange %s %d+%d: %v", db, c.off, c.n, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || string(got) != want {
			t.Errorf("ReadLTXRange %s %d+%d = %q, %v; want %q", db, c.off, c.n, got, err, want)
		}
	}
}

// TestLocalReadLTXRange reads pieces of a commit still in the capture log
// and of one written out as a file.
func TestLocalReadLTXRange(t *testing.T) {
	dir := t.TempDir()
	s := OpenStore(dir, slog.New(slog.DiscardHandler))
	defer s.Close()
	data := encodeLTX(t, 1)
	if err := s.WriteLTX("file.db", 0, 1, 1, data, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Append("log.db", 1, 1, func(w io.Writer) error { _, err := w.Write(data); return err }, true); err != nil {
		t.Fatal(err)
	}
	local := OpenLocal(dir)
	checkRanges(t, local, "file.db", 0, 1, 1, data)
	checkRanges(t, local, "log.db", 0, 1, 1, data)
}
