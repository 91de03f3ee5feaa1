package restore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
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

// TestChunkRelease: a chunk's buffer goes back to the free list only when
// its last holder lets go, and never twice.
func TestChunkRelease(t *testing.T) {
	free := make(chan []byte, 1)
	c := &chunk{buf: make([]byte, 10, 20), free: free}
	c.refs.Store(1) // the reader
	c.pin()         // a batch
	c.release()
	if len(free) != 0 {
		t.Fatal("buffer freed while a batch still holds it")
	}
	c.release()
	if len(free) != 1 || cap(<-free) != 20 {
		t.Fatal("buffer not freed, or not whole, after its last holder let go")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a release without a holder did not panic")
		}
	}()
	c.release()
}

// TestFetcherReusesBuffers reads a file of many chunks the way apply does
// and checks that its bytes arrive intact in fewer buffers than chunks.
func TestFetcherReusesBuffers(t *testing.T) {
	file := make([]byte, 8*chunkSize+123)
	_, _ = rand.NewChaCha8([32]byte{5}).Read(file)
	rep := ship.NewFileReplica(t.TempDir())
	if err := rep.WriteLTX("f.db", 0, 1, 1, file, false); err != nil {
		t.Fatal(err)
	}
	fi := &ltx.FileInfo{Level: 0, MinTXID: 1, MaxTXID: 1, Size: int64(len(file))}
	for _, parallelism := range []int{1, 4} {
		f := newFetcher(context.Background(), rep, "f.db", []*ltx.FileInfo{fi}, parallelism, nil)
		var got []byte
		bufs := map[*byte]bool{}
		for {
			b, err := f.take()
			if err == io.EOF {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			bufs[&b[0]] = true
			got = append(got, b...)
		}
		f.close()
		if !bytes.Equal(got, file) {
			t.Fatalf("parallelism %d: bytes differ", parallelism)
		}
		if len(bufs) > 2*parallelism+3 {
			t.Fatalf("parallelism %d: %d buffers for 9 chunks", parallelism, len(bufs))
		}
	}
}
