package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
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
	counted     *ship.Counted // requests made to the replica
}

// startReplication opens the replica and starts the uploader; every commit
// the store takes wakes it.
func startReplication(ctx context.Context, url string, store *ship.Store, sync bool, syncTimeout time.Duration, log *slog.Logger) (*replication, error) {
	replica, err := ship.OpenReplica(ctx, url)
	if err != nil {
		return nil, err
	}
	// A replica that answers with an error (no such bucket, bad credentials)
	// is a mistake to report now; one that cannot be reached is an outage
	// the uploader rides out.
	lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	_, err = replica.Databases(lctx)
	cancel()
	var netErr *net.OpError
	switch {
	case err == nil:
	case errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded):
		log.Warn("replica unreachable; commits wait in the data dir until it is back", "replica", replica.String(), "err", err)
	default:
		return nil, fmt.Errorf("replica %s: %w", replica, err)
	}
	index, counted := wrapReplica(replica)
	up := ship.NewUploader(store, index, log)
	store.OnAppend = up.Notify
	return &replication{up: up, sync: sync, syncTimeout: syncTimeout, index: index, counted: counted}, nil
}

// waitReplica blocks, in sync mode, until the replica has every commit of
// db stored so far.
func (r *replication) waitReplica(db string) error {
	if r == nil || !r.sync {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.syncTimeout)
	defer cancel()
	if err := r.up.WaitAll(ctx, db); err != nil {
		return fmt.Errorf("sync replica: %w", err)
	}
	return nil
}

// stop waits (bounded) for pending uploads and says what is left for the
// next mount.
func (r *replication) stop(timeout time.Duration, log *slog.Logger) {
	if r == nil {
		return
	}
	if pending := r.up.Close(timeout); len(pending) > 0 {
		for db, n := range pending {
			log.Warn("replica not up to date at unmount; these commits ship at the next mount", "db", db, "pending", n)
		}
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
