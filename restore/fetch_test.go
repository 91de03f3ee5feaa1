package restore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// droppingReplica cuts every other ranged read short after a few bytes with
// an error, as a connection reset does.
type droppingReplica struct {
	ship.Replica
	calls atomic.Int64
}

func (d *droppingReplica) ReadLTXRange(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, off, n int64) (io.ReadCloser, error) {
	rc, err := d.Replica.ReadLTXRange(ctx, db, level, minTXID, maxTXID, off, n)
	if err != nil || d.calls.Add(1)%2 == 0 {
		return rc, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, 150), errReader{}), rc}, nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset by peer") }

func TestRestoreResumesDroppedReads(t *testing.T) {
	h := sqliteHistory(t)
	rep := &droppingReplica{Replica: h.rep}
	for _, par := range []int{1, 3, 16} {
		out := filepath.Join(t.TempDir(), "app.db")
		var prog Progress
		res, err := Restore(context.Background(), rep, "app.db", Options{Output: out, Parallelism: par, Progress: &prog})
		if err != nil {
			t.Fatalf("parallelism %d: %v", par, err)
		}
		if got, _ := os.ReadFile(out); !bytes.Equal(got, h.state) || res.TXID != h.txid {
			t.Fatalf("parallelism %d: restored database differs", par)
		}
		if prog.Files.Load() == 0 || prog.Bytes.Load() == 0 || prog.Bytes.Load() > prog.TotalBytes.Load() ||
			prog.TotalFiles.Load() != int64(h.txid) {
			t.Fatalf("progress: %d/%d files, %d/%d bytes", prog.Files.Load(), prog.TotalFiles.Load(), prog.Bytes.Load(), prog.TotalBytes.Load())
		}
	}
	if rep.calls.Load() < 4 {
		t.Fatalf("only %d ranged reads", rep.calls.Load())
	}
}

// brokenReplica fails every read half way, forever.
type brokenReplica struct{ ship.Replica }

func (b brokenReplica) ReadLTXRange(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, off, n int64) (io.ReadCloser, error) {
	return io.NopCloser(errReader{}), nil
}

func TestRestoreGivesUpOnDeadReads(t *testing.T) {
	h := sqliteHistory(t)
	dir := t.TempDir()
	_, err := Restore(context.Background(), brokenReplica{h.rep}, "app.db", Options{Output: filepath.Join(dir, "x.db")})
	if err == nil || errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "connection reset by peer") {
		t.Fatalf("err = %v", err)
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Fatalf("left behind: %v", names)
	}
}

func TestRestoreCheck(t *testing.T) {
	h := sqliteHistory(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "app.db")
	var checked string
	_, err := Restore(context.Background(), h.rep, "app.db", Options{Output: out, Check: func(ctx context.Context, path string) error {
		checked = path
		if got, _ := os.ReadFile(path); !bytes.Equal(got, h.state) {
			t.Error("the check sees a file that differs from the restored state")
		}
		return errors.New("row 3 missing from index i")
	}})
	if !errors.Is(err, ErrCheckFailed) || !strings.Contains(err.Error(), "row 3 missing from index i") {
		t.Fatalf("err = %v", err)
	}
	if checked == "" || checked == out {
		t.Fatalf("checked %q, want a temporary file beside %s", checked, out)
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Fatalf("left behind: %v", names)
	}
}
