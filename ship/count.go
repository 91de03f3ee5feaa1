package ship

import (
	"context"
	"io"
	"sync/atomic"
	"time"

	"github.com/superfly/ltx"
)

// Counted is a ReplicaClient that counts the calls made to the replica
// behind it, one per operation (a listing of many pages counts once).
// Benchmarks and the log at unmount report them. The lease's reads and
// writes count as gets and puts.
type Counted struct {
	ReplicaClient
	n [numOps]atomic.Int64
}

// Replica operations Counted counts.
const (
	OpList = iota
	OpGet
	OpPut
	OpDelete
	numOps
)

var opNames = [numOps]string{"list", "get", "put", "delete"}

// NewCounted wraps r.
func NewCounted(r ReplicaClient) *Counted { return &Counted{ReplicaClient: r} }

// Counts returns the calls so far by operation name.
func (c *Counted) Counts() map[string]int64 {
	out := map[string]int64{}
	for i, name := range opNames {
		out[name] = c.n[i].Load()
	}
	return out
}

// Total is the number of calls so far.
func (c *Counted) Total() int64 {
	var t int64
	for i := range c.n {
		t += c.n[i].Load()
	}
	return t
}

func (c *Counted) Databases(ctx context.Context) ([]string, error) {
	c.n[OpList].Add(1)
	return c.ReplicaClient.Databases(ctx)
}

func (c *Counted) LTXFiles(ctx context.Context, db string, level int) ([]*ltx.FileInfo, error) {
	c.n[OpList].Add(1)
	return c.ReplicaClient.LTXFiles(ctx, db, level)
}

// LTXFilesAfter seeks when the replica behind can, and lists it all
// otherwise: one listing either way.
func (c *Counted) LTXFilesAfter(ctx context.Context, db string, level int, after ltx.TXID) ([]*ltx.FileInfo, error) {
	c.n[OpList].Add(1)
	return LTXFilesAfter(ctx, c.ReplicaClient, db, level, after)
}

func (c *Counted) OpenLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID) (io.ReadCloser, error) {
	c.n[OpGet].Add(1)
	return c.ReplicaClient.OpenLTX(ctx, db, level, minTXID, maxTXID)
}

func (c *Counted) PutLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, data []byte, createdAt time.Time) error {
	c.n[OpPut].Add(1)
	return c.ReplicaClient.PutLTX(ctx, db, level, minTXID, maxTXID, data, createdAt)
}

// DeleteLTX counts the requests an S3 replica makes for it: one per
// MaxDeleteBatch files.
func (c *Counted) DeleteLTX(ctx context.Context, db string, files []*ltx.FileInfo) error {
	c.n[OpDelete].Add(int64((len(files) + MaxDeleteBatch - 1) / MaxDeleteBatch))
	return c.ReplicaClient.DeleteLTX(ctx, db, files)
}

func (c *Counted) ReadLease(ctx context.Context) ([]byte, string, error) {
	c.n[OpGet].Add(1)
	return c.ReplicaClient.ReadLease(ctx)
}

func (c *Counted) WriteLease(ctx context.Context, data []byte, ifMatch string) (string, error) {
	c.n[OpPut].Add(1)
	return c.ReplicaClient.WriteLease(ctx, data, ifMatch)
}

func (c *Counted) DeleteLease(ctx context.Context, ifMatch string) error {
	c.n[OpDelete].Add(1)
	return c.ReplicaClient.DeleteLease(ctx, ifMatch)
}
