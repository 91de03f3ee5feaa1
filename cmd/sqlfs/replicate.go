package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/superfly/ltx"

	"github.com/sqlfs/sqlfs/ship"
)

// replication ships a mount's local store to its replica.
type replication struct {
	up          *ship.Uploader
	sync        bool          // -sync-replica: fsync waits for the replica
	syncTimeout time.Duration // how long an fsync waits before failing with EIO
	index       *ship.Index   // the replica as the uploader and the leveler see it
	leased      *ship.Leased  // writes to the replica wait for the lease
	counted     *ship.Counted // requests made to the replica
	timing      ship.LeaseTiming

	log     *slog.Logger
	mu      sync.Mutex
	lease   *ship.Lease   // nil until taken
	lost    chan struct{} // closed when another mount took the lease over
	stopped chan struct{} // closed by stop
}

// replicaConfig is what -replica and the flags beside it say.
type replicaConfig struct {
	url         string
	sync        bool
	syncTimeout time.Duration
	opt         ship.Options
}

// startReplication opens the replica, takes its lease and starts the
// uploader; every commit the store takes wakes it. A replica held by another
// live mount is refused. One that cannot be reached is an outage: the lease
// is taken in the background and nothing ships until it is.
func startReplication(ctx context.Context, c replicaConfig, dd dataDir, store *ship.Store, log *slog.Logger) (*replication, error) {
	replica, err := ship.OpenReplica(ctx, c.url)
	if err != nil {
		return nil, err
	}
	me, err := leaseHolder(dd)
	if err != nil {
		return nil, err
	}
	// A replica that answers with an error (no such bucket, bad credentials)
	// is a mistake to report now; one that cannot be reached is an outage
	// the uploader rides out.
	index, leased, counted := wrapReplica(replica)
	lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	_, err = counted.Databases(lctx)
	cancel()
	var netErr *net.OpError
	unreachable := errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded)
	if err != nil && !unreachable {
		return nil, fmt.Errorf("replica %s: %w", replica, err)
	}
	timing, err := leaseTiming()
	if err != nil {
		return nil, err
	}
	r := &replication{sync: c.sync, syncTimeout: c.syncTimeout, timing: timing, log: log,
		lost: make(chan struct{}), stopped: make(chan struct{})}
	r.index, r.leased, r.counted = index, leased, counted
	r.up = ship.NewUploader(store, r.index, log, c.opt)
	if !unreachable {
		lease, err := timing.Acquire(ctx, r.counted, me, log)
		if err != nil {
			r.up.Close(0)
			return nil, err
		}
		r.held(lease)
	} else {
		log.Warn("replica unreachable; commits wait in the data dir until it is back", "replica", replica.String(), "err", err)
		r.up.Pause()
		go r.leaseLater(r.counted, me, log)
	}
	store.OnAppend = r.up.Notify
	return r, nil
}

// leaseLater takes the lease of a replica that was unreachable at mount,
// retrying until it answers, and then lets the uploader ship. A replica
// another mount holds by then is never shipped to.
func (r *replication) leaseLater(c ship.ReplicaClient, me ship.LeaseHolder, log *slog.Logger) {
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		lease, err := r.timing.Acquire(ctx, c, me, log)
		cancel()
		var le *ship.LeaseError
		switch {
		case err == nil:
			r.held(lease)
			r.up.Resume()
			return
		case errors.As(err, &le):
			log.Error("not shipping to the replica", "err", err)
			return
		}
		select {
		case <-r.stopped:
			return
		case <-time.After(wait):
		}
	}
}

// held records the lease for stop to release and lets writes to the
// replica go ahead under it; if another mount takes it over, shipping stops
// for the rest of the mount. A lease taken after stop is released at once.
func (r *replication) held(lease *ship.Lease) {
	r.mu.Lock()
	r.lease = lease
	r.mu.Unlock()
	r.leased.Hold(lease)
	go func() {
		select {
		case <-lease.Lost():
			r.up.Pause()
			close(r.lost)
		case <-r.stopped:
		}
	}()
	select {
	case <-r.stopped:
		r.releaseLease()
	default:
	}
}

// leaseHolder describes this mount for the replica lease. The owner ID is
// kept in the data dir (created at its first replicated mount), so the same
// data dir mounted again after a crash is the same owner.
func leaseHolder(dd dataDir) (ship.LeaseHolder, error) {
	path := filepath.Join(dd.path, "owner-id")
	id, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		b := make([]byte, 16)
		rand.Read(b)
		id = []byte(hex.EncodeToString(b))
		if err := writeFileDurable(path, append(id, '\n')); err != nil {
			return ship.LeaseHolder{}, fmt.Errorf("data dir %s: %v", dd.path, err)
		}
	} else if err != nil {
		return ship.LeaseHolder{}, fmt.Errorf("data dir %s: %v", dd.path, err)
	}
	return ship.LeaseHolder{Owner: strings.TrimSpace(string(id)), DataDir: dd.path}.ThisProcess(), nil
}

// leaseTiming is the default lease timing, or SQLFS_LEASE_TIMING
// ("TTL,HEARTBEAT,IDLE"), which tests and benchmarks use to wait less.
func leaseTiming() (ship.LeaseTiming, error) {
	s := os.Getenv("SQLFS_LEASE_TIMING")
	if s == "" {
		return ship.LeaseTiming{}, nil
	}
	t, err := ship.ParseLeaseTiming(s)
	if err != nil {
		return t, fmt.Errorf("SQLFS_LEASE_TIMING: %v", err)
	}
	return t, nil
}

// writeFileDurable writes a file through a temp file, fsync and rename.
func writeFileDurable(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// errLeaseLost fails the fsyncs of -sync-replica once this mount no longer
// ships.
var errLeaseLost = errors.New("sync replica: not shipping: another sqlfs took over the replica lease")

// waitReplica blocks, in sync mode, until the replica has every commit of
// db stored so far. Once the lease is lost it fails at once.
func (r *replication) waitReplica(db string) error {
	if r == nil || !r.sync {
		return nil
	}
	select {
	case <-r.lost:
		return errLeaseLost
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.syncTimeout)
	defer cancel()
	go func() {
		select {
		case <-r.lost:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := r.up.WaitAll(ctx, db); err != nil {
		select {
		case <-r.lost:
			return errLeaseLost
		default:
		}
		return fmt.Errorf("sync replica: %w", err)
	}
	return nil
}

// stop waits (bounded) for pending uploads, says what is left for the next
// mount, and releases the replica lease.
func (r *replication) stop(timeout time.Duration, log *slog.Logger) {
	if r == nil {
		return
	}
	for db, n := range r.up.Close(timeout) {
		log.Warn("replica not up to date at unmount; these commits ship at the next mount", "db", db, "pending", n)
	}
	st := r.up.Stats()
	log.Info("replication stopped", "puts", st.PUTs, "merged_puts", st.MergedPUTs,
		"merged_commits", st.MergedCommits, "failed_uploads", st.Failures)
	close(r.stopped)
	r.releaseLease()
	logRequests(r.counted, log)
}

// releaseLease removes the replica lease, if this mount holds it.
func (r *replication) releaseLease() {
	r.mu.Lock()
	lease := r.lease
	r.lease = nil
	r.mu.Unlock()
	if lease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := lease.Release(ctx); err != nil {
		r.log.Warn("releasing the replica lease; another mount can take it once it is stale", "err", err, "after", ship.LeaseTTL)
	}
}

// storeSink puts one database's LTX files in the local store and, with
// -sync-replica, makes durability mean "in the replica".
type storeSink struct {
	store *ship.Store
	rep   *replication
	db    string
}

func (s storeSink) WriteLTX(minTXID, maxTXID ltx.TXID, write func(io.Writer) error, durable bool) error {
	if err := s.store.Append(s.db, minTXID, maxTXID, write, durable); err != nil {
		return err
	}
	if durable {
		return s.rep.waitReplica(s.db)
	}
	return nil
}

func (s storeSink) Acknowledge() error { return s.rep.waitReplica(s.db) }

func (s storeSink) Sync() error {
	if err := s.store.SyncDB(s.db); err != nil {
		return err
	}
	return s.rep.waitReplica(s.db)
}
