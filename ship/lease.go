package ship

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/superfly/ltx"
)

// A replica is shipped to by one mount at a time. The mount holds a lease:
// an object named LeaseName at the replica root (beside the database
// prefixes, which it cannot be mistaken for: listings of databases take
// only prefixes, and no LTX name starts with a dot). It is created only if
// absent and rewritten only if unchanged since its holder last wrote it
// (If-None-Match / If-Match), so of two mounts racing for it exactly one
// wins, and a holder whose lease was taken over learns it at its next write.
//
// The lease costs requests only while the mount writes to the replica:
//
//   - Every write to the replica (an upload, a compaction, a retention
//     delete) goes through Leased, which first makes sure the lease is
//     active: marked active in the object and confirmed by a write less than
//     TTL-Heartbeat ago. If not, it writes it (If-Match its own ETag) before
//     the replica write. That write failing its precondition means another
//     mount took the lease over: this one stops writing for good (Lost).
//   - While active, the lease is renewed every Heartbeat. Once nothing was
//     written for Idle, it is written once more, marked idle, and left
//     alone: an idle mount makes no requests at all.
//
// Another mount refuses a lease of a different owner that is active with a
// heartbeat younger than TTL, or idle and younger than TTL, or idle and held
// by a process that is still running on the same machine (same boot ID, same
// PID and process start time: a check of /proc, no request). Otherwise it
// takes the lease over with a warning naming the holder. The owner ID lives
// in the data dir, so the same data dir mounted again after kill -9 takes its
// own lease back at once.
//
// So two mounts never both write: a writer confirms its lease with a
// conditional write before writing after any pause of TTL-Heartbeat, and a
// takeover changes the lease's ETag. LTX uploads are conditional as well, so
// even a write that raced a takeover (a request delayed past TTL) cannot
// replace a file.

// LeaseName is the lease object at a replica root.
const LeaseName = ".sqlfs-lease"

// The default lease timing: how long a lease lives without a heartbeat,
// how often an active holder renews it, and how long after its last write
// to the replica a holder marks it idle and stops renewing.
const (
	LeaseTTL       = 30 * time.Second
	LeaseHeartbeat = 10 * time.Second
	LeaseIdle      = 20 * time.Second
)

// LeaseTiming sets a lease's durations; zero fields take the defaults.
type LeaseTiming struct {
	TTL, Heartbeat, Idle time.Duration
}

func (t LeaseTiming) withDefaults() LeaseTiming {
	if t.TTL <= 0 {
		t.TTL = LeaseTTL
	}
	if t.Heartbeat <= 0 {
		t.Heartbeat = min(LeaseHeartbeat, t.TTL/3)
	}
	if t.Idle <= 0 {
		t.Idle = LeaseIdle
	}
	return t
}

// ParseLeaseTiming parses "TTL,HEARTBEAT,IDLE" (Go durations), the form of
// SQLFS_LEASE_TIMING, which tests and benchmarks use to shorten the waits.
func ParseLeaseTiming(s string) (LeaseTiming, error) {
	f := strings.Split(s, ",")
	if len(f) != 3 {
		return LeaseTiming{}, fmt.Errorf("lease timing %q: want TTL,HEARTBEAT,IDLE", s)
	}
	var d [3]time.Duration
	for i := range f {
		var err error
		if d[i], err = time.ParseDuration(strings.TrimSpace(f[i])); err != nil || d[i] <= 0 {
			return LeaseTiming{}, fmt.Errorf("lease timing %q: %q is not a positive duration", s, f[i])
		}
	}
	if d[1] >= d[0] {
		return LeaseTiming{}, fmt.Errorf("lease timing %q: the heartbeat must be shorter than the TTL", s)
	}
	return LeaseTiming{TTL: d[0], Heartbeat: d[1], Idle: d[2]}, nil
}

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

// Lease states, as the lease object records them.
const (
	leaseActive = "active"
	leaseIdle   = "idle"
)

// LeaseHolder is what the lease object says about the mount holding it.
type LeaseHolder struct {
	Owner     string    `json:"owner"` // the data dir's owner ID
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	DataDir   string    `json:"data_dir"`
	Since     time.Time `json:"since"`
	Heartbeat time.Time `json:"heartbeat"` // the last write of the lease
	// State is "active" (renewed every heartbeat) or "idle" (not renewed
	// until the holder writes to the replica again); "" reads as active.
	State string `json:"state,omitempty"`
	// BootID and ProcStart identify the holder's process on its machine, so
	// a mount on the same machine can tell whether it still runs.
	BootID    string `json:"boot_id,omitempty"`
	ProcStart uint64 `json:"proc_start,omitempty"`
}

// ThisProcess fills in the fields that identify the calling process on
// this machine (Host, PID, BootID, ProcStart).
func (h LeaseHolder) ThisProcess() LeaseHolder {
	h.Host, _ = os.Hostname()
	h.PID = os.Getpid()
	h.BootID = bootID()
	h.ProcStart = procStart(h.PID)
	return h
}

// runningHere reports whether the holder's process is running on this
// machine: same boot, and a process with its PID that started when it did.
// False when it cannot tell (another machine, another PID namespace).
func (h LeaseHolder) runningHere() bool {
	if h.BootID == "" || h.ProcStart == 0 || h.BootID != bootID() {
		return false
	}
	return procStart(h.PID) == h.ProcStart
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// procStart returns a process's start time in clock ticks since boot (field
// 22 of /proc/PID/stat), 0 if there is no such process.
func procStart(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')') // the command name may hold spaces
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

// LeaseError is the refusal to ship to a replica another mount holds.
type LeaseError struct {
	Replica string
	Holder  LeaseHolder
	Age     time.Duration // since the holder last wrote the lease
	TTL     time.Duration
	Running bool // idle, and its process runs on this machine
}

func (e *LeaseError) Error() string {
	h := e.Holder
	head := fmt.Sprintf("replica %s is in use by sqlfs on %s (pid %d, data dir %s) since %s",
		e.Replica, h.Host, h.PID, h.DataDir, h.Since.UTC().Format(time.RFC3339))
	switch {
	case h.State == leaseIdle && e.Running:
		return head + fmt.Sprintf(" (idle for %s; that process still runs on this machine: stop it first)", e.Age.Round(time.Second))
	case h.State == leaseIdle:
		return head + fmt.Sprintf(" (idle for %s; an idle lease is taken over after %s)", e.Age.Round(time.Second), e.TTL)
	}
	return head + fmt.Sprintf(" (last heartbeat %s ago; a lease is taken over after %s without one)", e.Age.Round(time.Second), e.TTL)
}

// ErrLeaseLost is returned by the writes of a Leased replica once another
// mount has taken the lease over: this mount must not write to it again.
var ErrLeaseLost = errors.New("the replica lease was taken over by another sqlfs mount")

// errNoLease is returned by the writes of a Leased replica before the lease
// is taken.
var errNoLease = errors.New("replica lease not taken yet")

// Lease is a held replica lease. Use confirms it before each write to the
// replica; a background loop renews it while writes go on and marks it idle
// once they stop.
//
// Invariant: while lost is false, etag is the ETag of the lease object as
// this holder last wrote it, confirmed is when that write was sent, and
// active says whether it was marked active.
type Lease struct {
	c    LeaseClient
	t    LeaseTiming
	log  *slog.Logger
	stop chan struct{}
	once sync.Once // closes stop
	done chan struct{}
	lost chan struct{} // closed when another mount took the lease over

	mu        sync.Mutex // held across lease writes, so writers wait for one
	me        LeaseHolder
	etag      string
	confirmed time.Time
	active    bool
	lastUse   time.Time // the last write to the replica
	isLost    bool
	writes    int // lease writes so far (tests count them)
}

// Acquire takes the replica's lease for me, marked active: one absent,
// one of the same owner, or one another mount may take over (see the top of
// this file). Any other is a *LeaseError.
func (t LeaseTiming) Acquire(ctx context.Context, c LeaseClient, me LeaseHolder, log *slog.Logger) (*Lease, error) {
	t = t.withDefaults()
	for attempt := 0; ; attempt++ {
		now := time.Now()
		me.Since, me.Heartbeat, me.State = now, now, leaseActive
		data, err := json.Marshal(me)
		if err != nil {
			return nil, err
		}
		etag, err := c.WriteLease(ctx, data, "")
		if err == nil {
			return startLease(c, t, me, etag, now, log), nil
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
		age := max(now.Sub(h.Heartbeat), 0)
		if h.Owner != me.Owner {
			running := h.State == leaseIdle && h.runningHere()
			if age < t.TTL || running {
				return nil, &LeaseError{Replica: c.String(), Holder: h, Age: age, TTL: t.TTL, Running: running}
			}
		}
		etag, err = c.WriteLease(ctx, data, curTag)
		if err == nil {
			if h.Owner != me.Owner {
				msg := "took over a stale replica lease"
				if h.State == leaseIdle {
					msg = "took over the replica lease of an idle mount; if it still runs, it stops shipping at its next write"
				}
				log.Warn(msg, "replica", c.String(), "host", h.Host, "pid", h.PID,
					"data_dir", h.DataDir, "last_write", h.Heartbeat.UTC().Format(time.RFC3339))
			}
			return startLease(c, t, me, etag, now, log), nil
		} else if !errors.Is(err, ErrExists) || attempt >= 3 {
			return nil, fmt.Errorf("replica %s: lease: %w", c, err)
		}
		// Changed between our read and write: look again.
	}
}

func startLease(c LeaseClient, t LeaseTiming, me LeaseHolder, etag string, at time.Time, log *slog.Logger) *Lease {
	l := &Lease{c: c, t: t, log: log, me: me, etag: etag, confirmed: at, active: true, lastUse: at, writes: 1,
		stop: make(chan struct{}), done: make(chan struct{}), lost: make(chan struct{})}
	go l.loop()
	return l
}

// Use makes sure the lease is held and active before a write to the
// replica, writing it only when it is idle or its last confirmation is
// older than TTL-Heartbeat. ErrLeaseLost means another mount holds it now.
func (l *Lease) Use(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isLost {
		return ErrLeaseLost
	}
	now := time.Now()
	l.lastUse = now
	if l.active && now.Sub(l.confirmed) < l.t.TTL-l.t.Heartbeat {
		return nil
	}
	return l.writeLocked(ctx, leaseActive)
}

// loop renews an active lease every Heartbeat and marks it idle once the
// replica was not written for Idle; an idle lease is left alone.
func (l *Lease) loop() {
	defer close(l.done)
	tick := time.NewTicker(min(l.t.Heartbeat, l.t.Idle) / 2)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		l.mu.Lock()
		now := time.Now()
		var err error
		switch {
		case l.isLost || !l.active:
		case now.Sub(l.lastUse) >= l.t.Idle:
			err = l.beat(leaseIdle)
		case now.Sub(l.confirmed) >= l.t.Heartbeat:
			err = l.beat(leaseActive)
		}
		l.mu.Unlock()
		if err != nil && !errors.Is(err, ErrLeaseLost) {
			l.log.Warn("renewing the replica lease", "replica", l.c.String(), "err", err)
		}
	}
}

// beat writes the lease in state with a bounded wait; called with mu held.
func (l *Lease) beat(state string) error {
	ctx, cancel := context.WithTimeout(context.Background(), l.t.TTL-l.t.Heartbeat)
	defer cancel()
	return l.writeLocked(ctx, state)
}

// writeLocked rewrites the lease object in state, if it is still as this
// holder last wrote it. Called with mu held.
func (l *Lease) writeLocked(ctx context.Context, state string) error {
	me := l.me
	sent := time.Now()
	me.Heartbeat, me.State = sent, state
	data, err := json.Marshal(me)
	if err != nil {
		return err
	}
	etag, err := l.c.WriteLease(ctx, data, l.etag)
	l.writes++
	if errors.Is(err, ErrExists) && l.adoptLocked(ctx) {
		etag, err = l.c.WriteLease(ctx, data, l.etag)
		l.writes++
	}
	if errors.Is(err, ErrExists) {
		l.loseLocked()
		return ErrLeaseLost
	} else if err != nil {
		return err
	}
	l.me, l.etag, l.confirmed, l.active = me, etag, sent, state == leaseActive
	if state == leaseIdle {
		l.log.Debug("replica lease idle", "replica", l.c.String())
	}
	return nil
}

// adoptLocked handles a lease write refused because the lease changed: if
// it still names this very process, a write of ours that timed out did land;
// its ETag is taken and true returned. Called with mu held.
func (l *Lease) adoptLocked(ctx context.Context) bool {
	data, etag, err := l.c.ReadLease(ctx)
	if err != nil {
		return false
	}
	var h LeaseHolder
	if json.Unmarshal(data, &h) != nil || h.Owner != l.me.Owner || h.PID != l.me.PID || h.ProcStart != l.me.ProcStart || h.Host != l.me.Host {
		return false
	}
	l.etag = etag
	return true
}

// loseLocked records that another mount holds the lease and says so, naming
// it when the lease can be read. Called with mu held.
func (l *Lease) loseLocked() {
	l.isLost = true
	close(l.lost)
	args := []any{"replica", l.c.String()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if data, _, err := l.c.ReadLease(ctx); err == nil {
		var h LeaseHolder
		if json.Unmarshal(data, &h) == nil {
			args = append(args, "new_host", h.Host, "new_pid", h.PID, "new_data_dir", h.DataDir)
		}
	}
	l.log.Error("another sqlfs took over the replica lease; this mount no longer ships: its commits stay in the data dir, and -sync-replica fsyncs fail", args...)
}

// Lost is closed when another mount has taken the lease over: this one must
// stop shipping.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Writes returns how many times the lease object was written so far.
func (l *Lease) Writes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.writes
}

// Release stops renewing the lease and removes it, unless someone else
// holds it by now. Calls after the first do nothing.
func (l *Lease) Release(ctx context.Context) error {
	released := true
	l.once.Do(func() { close(l.stop); released = false })
	if released {
		return nil
	}
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isLost {
		return nil
	}
	err := l.c.DeleteLease(ctx, l.etag)
	if errors.Is(err, ErrExists) {
		return nil // not ours any more
	}
	return err
}

// Leased is a ReplicaClient whose writes (PutLTX, DeleteLTX) are made only
// under the replica lease: each first calls Lease.Use. Until Hold gives it
// the lease, writes fail; reads always pass through.
type Leased struct {
	ReplicaClient

	mu    sync.Mutex
	lease *Lease
}

// NewLeased wraps r.
func NewLeased(r ReplicaClient) *Leased { return &Leased{ReplicaClient: r} }

// Hold makes l the lease writes are made under.
func (g *Leased) Hold(l *Lease) {
	g.mu.Lock()
	g.lease = l
	g.mu.Unlock()
}

func (g *Leased) use(ctx context.Context) error {
	g.mu.Lock()
	l := g.lease
	g.mu.Unlock()
	if l == nil {
		return errNoLease
	}
	return l.Use(ctx)
}

// PutLTX puts under the lease.
func (g *Leased) PutLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, data []byte, createdAt time.Time) error {
	if err := g.use(ctx); err != nil {
		return err
	}
	return g.ReplicaClient.PutLTX(ctx, db, level, minTXID, maxTXID, data, createdAt)
}

// DeleteLTX deletes under the lease.
func (g *Leased) DeleteLTX(ctx context.Context, db string, files []*ltx.FileInfo) error {
	if err := g.use(ctx); err != nil {
		return err
	}
	return g.ReplicaClient.DeleteLTX(ctx, db, files)
}

// LTXFilesAfter seeks where the replica behind can.
func (g *Leased) LTXFilesAfter(ctx context.Context, db string, level int, after ltx.TXID) ([]*ltx.FileInfo, error) {
	return LTXFilesAfter(ctx, g.ReplicaClient, db, level, after)
}
