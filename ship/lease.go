package ship

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// A replica is shipped to by one mount at a time. The mount holds a lease:
// an object named LeaseName at the replica root (beside the database
// prefixes, which it cannot be mistaken for: listings of databases take
// only prefixes, and no LTX name starts with a dot). It is created only if
// absent and rewritten only if unchanged since it was read (If-None-Match /
// If-Match), so of two mounts racing for it exactly one wins.
//
// The holder rewrites it every LeaseHeartbeat. A lease whose heartbeat is
// older than LeaseTTL belongs to a mount that died or lost the replica and
// may be taken over. The owner ID lives in the data dir, so the same data
// dir mounted again after kill -9 takes its own lease back at once.
//
// The lease is for clear refusals; correctness does not rest on it: LTX
// uploads are conditional and a diverged history is refused anyway.

// LeaseName is the lease object at a replica root.
const LeaseName = ".sqlfs-lease"

// LeaseTTL is how long a lease lives without a heartbeat; LeaseHeartbeat is
// how often the holder renews it.
const (
	LeaseTTL       = 30 * time.Second
	LeaseHeartbeat = 10 * time.Second
)

// LeaseClient reads and writes a replica's lease object. ETags are opaque.
type LeaseClient interface {
	// ReadLease returns the lease object and its ETag; ErrNotFound when
	// there is none.
	ReadLease(ctx context.Context) (data []byte, etag string, err error)
	// WriteLease stores the lease object if it is absent (ifMatch "") or
	// still has ETag ifMatch, and returns its new ETag. Otherwise it fails
	// with ErrExists.
	WriteLease(ctx context.Context, data []byte, ifMatch string) (etag string, err error)
	// DeleteLease removes the lease object if it still has ETag ifMatch.
	DeleteLease(ctx context.Context, ifMatch string) error
	String() string
}

// LeaseHolder is what the lease object says about the mount holding it.
type LeaseHolder struct {
	Owner     string    `json:"owner"` // the data dir's owner ID
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	DataDir   string    `json:"data_dir"`
	Since     time.Time `json:"since"`
	Heartbeat time.Time `json:"heartbeat"`
}

// LeaseError is the refusal to ship to a replica another live mount holds.
type LeaseError struct {
	Replica string
	Holder  LeaseHolder
	Age     time.Duration // since the holder's last heartbeat
}

func (e *LeaseError) Error() string {
	h := e.Holder
	return fmt.Sprintf("replica %s is in use by sqlfs on %s (pid %d, data dir %s) since %s (last heartbeat %s ago; a lease is taken over after %s without one)",
		e.Replica, h.Host, h.PID, h.DataDir, h.Since.UTC().Format(time.RFC3339), e.Age.Round(time.Second), LeaseTTL)
}

// Lease is a held replica lease, renewed in the background until Release.
type Lease struct {
	c    LeaseClient
	log  *slog.Logger
	stop chan struct{}
	done chan struct{}
	lost chan struct{} // closed when another mount took the lease over

	mu   sync.Mutex
	me   LeaseHolder
	etag string
}

// AcquireLease takes the replica's lease for me, taking over one of the same
// owner or one without a heartbeat for LeaseTTL, and starts renewing it. A
// live lease of another owner is a *LeaseError.
func AcquireLease(ctx context.Context, c LeaseClient, me LeaseHolder, log *slog.Logger) (*Lease, error) {
	for attempt := 0; ; attempt++ {
		now := time.Now()
		me.Since, me.Heartbeat = now, now
		data, err := json.Marshal(me)
		if err != nil {
			return nil, err
		}
		etag, err := c.WriteLease(ctx, data, "")
		if err == nil {
			return startLease(c, me, etag, log), nil
		} else if !errors.Is(err, ErrExists) {
			return nil, fmt.Errorf("replica %s: lease: %w", c, err)
		}
		cur, curTag, err := c.ReadLease(ctx)
		if errors.Is(err, ErrNotFound) {
			continue // released meanwhile
		} else if err != nil {
			return nil, fmt.Errorf("replica %s: lease: %w", c, err)
		}
		var h LeaseHolder
		if err := json.Unmarshal(cur, &h); err != nil || h.Owner == "" {
			return nil, fmt.Errorf("replica %s: %s is not a sqlfs lease; remove it if nothing else uses this replica", c, LeaseName)
		}
		age := now.Sub(h.Heartbeat)
		if h.Owner != me.Owner && age < LeaseTTL {
			return nil, &LeaseError{Replica: c.String(), Holder: h, Age: max(age, 0)}
		}
		etag, err = c.WriteLease(ctx, data, curTag)
		if err == nil {
			if h.Owner != me.Owner {
				log.Warn("took over a stale replica lease", "replica", c.String(), "host", h.Host, "pid", h.PID,
					"data_dir", h.DataDir, "last_heartbeat", h.Heartbeat.UTC().Format(time.RFC3339))
			}
			return startLease(c, me, etag, log), nil
		} else if !errors.Is(err, ErrExists) || attempt >= 3 {
			return nil, fmt.Errorf("replica %s: lease: %w", c, err)
		}
		// Changed between our read and write: look again.
	}
}

func startLease(c LeaseClient, me LeaseHolder, etag string, log *slog.Logger) *Lease {
	l := &Lease{c: c, log: log, me: me, etag: etag,
		stop: make(chan struct{}), done: make(chan struct{}), lost: make(chan struct{})}
	go l.renew()
	return l
}

// renew rewrites the lease every LeaseHeartbeat. A failure to reach the
// replica is retried at the next beat; a lease someone else took is
// reported and no longer renewed.
func (l *Lease) renew() {
	defer close(l.done)
	t := time.NewTicker(LeaseHeartbeat)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), LeaseHeartbeat)
		err := l.beat(ctx)
		cancel()
		if errors.Is(err, ErrExists) {
			l.log.Error("lost the replica lease: another sqlfs took it over after our heartbeats stopped", "replica", l.c.String())
			close(l.lost)
			return
		} else if err != nil {
			l.log.Warn("renewing the replica lease", "replica", l.c.String(), "err", err)
		}
	}
}

func (l *Lease) beat(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	me := l.me
	me.Heartbeat = time.Now()
	data, err := json.Marshal(me)
	if err != nil {
		return err
	}
	etag, err := l.c.WriteLease(ctx, data, l.etag)
	if err != nil {
		return err
	}
	l.me, l.etag = me, etag
	return nil
}

// Lost is closed when another mount has taken the lease over: this one must
// stop shipping.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Release stops renewing the lease and removes it, unless someone else
// holds it by now.
func (l *Lease) Release(ctx context.Context) error {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.c.DeleteLease(ctx, l.etag)
	if errors.Is(err, ErrExists) {
		return nil // not ours any more
	}
	return err
}
