package ship

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superfly/ltx"
)

// testTiming shortens the lease's waits so tests see a whole cycle.
var testTiming = LeaseTiming{TTL: 2 * time.Second, Heartbeat: 400 * time.Millisecond, Idle: 800 * time.Millisecond}

// leaseReplicas runs f against a directory replica and a real S3 server.
func leaseReplicas(t *testing.T, f func(t *testing.T, r ReplicaClient)) {
	t.Run("file", func(t *testing.T) { f(t, NewFileReplica(t.TempDir())) })
	t.Run("s3", func(t *testing.T) {
		endpoint, bucket := startS3(t)
		r, err := OpenReplica(context.Background(), s3URL(endpoint, bucket, "leased"))
		if err != nil {
			t.Fatal(err)
		}
		f(t, r)
	})
}

// SyncLog is a log buffer a goroutine writes while a test reads it (the
// tests of package ship_test use it too).
type SyncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *SyncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *SyncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func readHolder(t *testing.T, r ReplicaClient) LeaseHolder {
	t.Helper()
	data, _, err := r.ReadLease(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var h LeaseHolder
	if err := json.Unmarshal(data, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

func waitState(t *testing.T, r ReplicaClient, state string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for readHolder(t, r).State != state {
		if time.Now().After(deadline) {
			t.Fatalf("lease never became %s: %+v", state, readHolder(t, r))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An idle mount makes no request: after its last write the lease is renewed
// while writes go on, then marked idle once, and then left alone.
func TestLeaseIdleMakesNoRequests(t *testing.T) {
	leaseReplicas(t, func(t *testing.T, r ReplicaClient) {
		ctx := context.Background()
		c := NewCounted(r)
		g := NewLeased(c)
		l, err := testTiming.Acquire(ctx, c, LeaseHolder{Owner: "a"}.ThisProcess(), slog.New(slog.NewTextHandler(&SyncLog{}, nil)))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Release(ctx)
		g.Hold(l)
		// Writes for a while: the lease is renewed every heartbeat.
		for i := 0; i < 16; i++ {
			if err := g.PutLTX(ctx, "x.db", 0, ltx.TXID(i+1), ltx.TXID(i+1), []byte("not an ltx"), time.Time{}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if n := l.Writes(); n < 3 {
			t.Fatalf("lease written %d times over 1.6s of writes with a 400ms heartbeat", n)
		}
		waitState(t, r, leaseIdle)
		before, writes := c.Total(), l.Writes()
		time.Sleep(2 * testTiming.TTL)
		if got := c.Total() - before; got != 0 || l.Writes() != writes {
			t.Fatalf("idle lease made %d requests (%v) in %s", got, c.Counts(), 2*testTiming.TTL)
		}
		// The next write marks it active again first.
		if err := g.PutLTX(ctx, "x.db", 0, 100, 100, []byte("x"), time.Time{}); err != nil {
			t.Fatal(err)
		}
		if h := readHolder(t, r); h.State != leaseActive {
			t.Fatalf("lease after a write: %+v", h)
		}
	})
}

// A second mount is refused while the first writes, and while it is idle
// but younger than the TTL or running on this machine; an idle lease of
// another machine older than the TTL is taken over, and the old holder
// stops writing at its next write, without touching the new holder's lease.
func TestLeaseIdleTakeover(t *testing.T) {
	leaseReplicas(t, func(t *testing.T, r ReplicaClient) {
		ctx := context.Background()
		var logA, logB SyncLog
		c := NewCounted(r)
		ga := NewLeased(c)
		me := LeaseHolder{Owner: "a", DataDir: "/data/a"}.ThisProcess()
		la, err := testTiming.Acquire(ctx, c, me, slog.New(slog.NewTextHandler(&logA, nil)))
		if err != nil {
			t.Fatal(err)
		}
		defer la.Release(ctx)
		ga.Hold(la)
		b := LeaseHolder{Owner: "b", Host: "hostb", PID: 2, DataDir: "/data/b"}
		logb := slog.New(slog.NewTextHandler(&logB, nil))

		_, err = testTiming.Acquire(ctx, r, b, logb)
		var le *LeaseError
		if !errors.As(err, &le) || !strings.Contains(err.Error(), "(pid ") || !strings.Contains(err.Error(), "last heartbeat") {
			t.Fatalf("second mount while the first writes: %v", err)
		}
		waitState(t, r, leaseIdle)
		_, err = testTiming.Acquire(ctx, r, b, logb)
		if !errors.As(err, &le) || !strings.Contains(err.Error(), "idle for") || !strings.Contains(err.Error(), "still runs on this machine") {
			t.Fatalf("second mount while the first is idle, on this machine: %v", err)
		}

		// The same lease as written by a mount on another machine: idle,
		// older than the TTL.
		data, tag, err := r.ReadLease(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var h LeaseHolder
		json.Unmarshal(data, &h)
		h.BootID, h.Host = "another-machine", "hosta"
		other, _ := json.Marshal(h)
		newTag, err := r.WriteLease(ctx, other, tag)
		if err != nil {
			t.Fatal(err)
		}
		la.mu.Lock()
		la.etag, la.me = newTag, h // as if a had written it
		la.mu.Unlock()
		if _, err = testTiming.Acquire(ctx, r, b, logb); !errors.As(err, &le) || !strings.Contains(err.Error(), "an idle lease is taken over after") {
			t.Fatalf("second mount, idle lease younger than the TTL: %v", err)
		}
		time.Sleep(testTiming.TTL)
		lb, err := testTiming.Acquire(ctx, r, b, logb)
		if err != nil {
			t.Fatalf("idle lease older than the TTL: %v", err)
		}
		defer lb.Release(ctx)
		if !strings.Contains(logB.String(), "took over the replica lease of an idle mount") || !strings.Contains(logB.String(), "data_dir=/data/a") {
			t.Fatalf("takeover log:\n%s", logB.String())
		}

		// a's next write is refused before it reaches the replica.
		puts := c.Counts()["put"]
		err = ga.PutLTX(ctx, "x.db", 0, 1, 1, []byte("x"), time.Time{})
		if !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("old holder's write: %v", err)
		}
		if err := ga.DeleteLTX(ctx, "x.db", []*ltx.FileInfo{{MinTXID: 1, MaxTXID: 1}}); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("old holder's delete: %v", err)
		}
		if got := c.Counts()["put"] - puts; got != 1 { // the refused lease write, no LTX put
			t.Fatalf("old holder made %d puts after the takeover, want 1 (its lease check)", got)
		}
		select {
		case <-la.Lost():
		default:
			t.Fatal("Lost not closed")
		}
		if !strings.Contains(logA.String(), "level=ERROR") || !strings.Contains(logA.String(), "this mount no longer ships") ||
			!strings.Contains(logA.String(), "new_data_dir=/data/b") {
			t.Fatalf("old holder's log:\n%s", logA.String())
		}
		if _, err := r.LTXFiles(ctx, "x.db", 0); err != nil {
			t.Fatal(err)
		}
		if h := readHolder(t, r); h.Owner != "b" || h.State != leaseActive {
			t.Fatalf("lease after the old holder's attempt: %+v", h)
		}
		// Its release leaves b's lease alone.
		la.Release(ctx)
		if h := readHolder(t, r); h.Owner != "b" {
			t.Fatalf("lease after the old holder's release: %+v", h)
		}
	})
}
