package ship

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/superfly/ltx"
)

// Uploader ships each commit of the local store to a replica as its own LTX
// object, as soon as the commit is stored: Store.OnAppend wakes it, there is
// no polling. Several uploads run at once, so objects can land out of order;
// a database's replica position is the longest gap-free run of TXIDs from 1,
// and only that is ever reported as shipped.
//
// Under overload it merges: when a database's backlog passes MaxBacklog
// commits or its oldest unshipped commit is older than MaxLag, or when a PUT
// would pass MaxPutRate, what is waiting goes up as one LTX file (merge.go).
// It also merges, before the backlog reaches MaxBacklog, once commits
// clearly arrive faster than single-commit PUTs can carry them (outpaced).
//
// Invariants, under mu: for each database, every TXID <= pos is in the
// replica; every TXID in (pos, next) is in a range that is uploading,
// uploaded (done) or waiting to be started again (todo); TXIDs >= next are
// only local. A local file is never removed by the uploader, so nothing is
// lost while the replica is away.
type Uploader struct {
	store   *Store
	replica ReplicaClient
	log     *slog.Logger
	opt     Options
	// mergeEvery spaces the uploads of a merging backlog (mergeInterval;
	// tests set it).
	mergeEvery time.Duration

	mu       sync.Mutex
	changed  *sync.Cond // broadcast on every position change or new work
	dbs      map[string]*shipState
	inflight int
	paused   bool
	closed   bool
	bucket   tokenBucket
	putTime  time.Duration // moving average of single-commit uploads' durations; 0 until one ends
	scratch  []*[]byte     // read buffers of merges, kept between them (mergeLocal)
	stats    Stats         // counters; DBs is filled in by Stats
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// Options tune an Uploader. The zero value of a field means its default
// (MaxInFlight) or no limit (the others).
type Options struct {
	// MaxInFlight bounds concurrent uploads (all databases together); when
	// zero, 8 to S3 and 1 to a file replica.
	MaxInFlight int
	// MaxBacklog is the number of commits waiting for the replica past
	// which a database's backlog is merged into one file to catch up.
	MaxBacklog int
	// MaxLag is the age of the oldest commit waiting for the replica past
	// which the backlog is merged.
	MaxLag time.Duration
	// MaxPutRate caps PUTs per second; when a PUT would exceed it, the
	// commits pending by the time one is allowed go up merged.
	MaxPutRate float64
}

type shipState struct {
	name     string
	pos      ltx.TXID              // gap-free position in the replica
	next     ltx.TXID              // next TXID to start
	local    ltx.TXID              // newest TXID in the local store
	done     map[ltx.TXID]ltx.TXID // uploaded ranges past pos: min -> max
	todo     []txRange             // ranges to start again (failed or cut short), by min
	inflight int
	err      error     // the last upload error, cleared by a success
	fails    int       // consecutive failures, for backoff
	retryAt  time.Time // no upload before this while fails > 0
	starting bool      // Start has not read the replica's position yet
	merging  bool      // the backlog passed a bound and has not stayed caught up yet
	calmAt   time.Time // while merging: since when the backlog is no more than MaxInFlight
	mergeAt  time.Time // while merging: no upload before this
	warnAt   ltx.TXID  // backlog size that triggers the next warning
	commits  []commitTime
	ackLag   time.Duration // commit to acknowledgement of the newest acknowledged commit
}

type txRange struct{ min, max ltx.TXID }

// commitTime says that commit txid was stored at at. Under a long outage
// only one entry per second is kept, which bounds memory and keeps lag
// figures to the second.
type commitTime struct {
	txid ltx.TXID
	at   time.Time
}

const commitTimesDense = 1 << 16

// maxBackoff is the longest wait between attempts while the replica fails
// (plus up to half again of jitter): a replica back from an outage is
// noticed within about that long.
const maxBackoff = 2 * time.Second

// mergeInterval is the least time between the starts of two uploads of a
// database whose backlog is merging. A PUT costs the same (to a file
// replica, two fsyncs) whatever it carries, and an uploader that is behind
// would otherwise start the next one as soon as the last one ends, with
// what arrived meanwhile: at full speed that was 190 PUTs a second to a
// file replica. Spaced, each carries more, and the replica stays within
// about this long plus one upload of the newest commit. At 20 ms a
// full-speed writer still paid ~50 PUTs a second: to a file replica about
// 1 ms of sqlfs's CPU each (an inode, two fsyncs), to a local S3 server
// about 1 ms of the server's, on the cores the writer uses.
const mergeInterval = 50 * time.Millisecond

// mergeCooldown is how long a merging backlog must stay caught up before
// commits go up one file each again.
const mergeCooldown = time.Second

// Merging starts before MaxBacklog once at least outpacedMin commits wait to
// be started and putting them one at a time would take more than
// outpacedFactor times as long as they took to arrive (outpaced). At 10 or
// 100 commits a second the uploader keeps up and each commit goes up
// alone; at full speed (thousands a second, against a PUT of a millisecond
// or more) the backlog used to reach MaxBacklog through hundreds of
// single-commit PUTs first, the most expensive part of shipping a burst.
const (
	outpacedMin    = 32
	outpacedFactor = 4
)

// backlogWarn is the backlog (commits not yet in the replica) at which the
// uploader first warns; each later warning waits for twice the backlog.
const backlogWarn = 1000

// ErrDiverged is returned when the replica holds a different history than
// the local store at the same TXID: sqlfs refuses to overwrite it.
var ErrDiverged = errors.New("replica history differs from local history")

// NewUploader returns an uploader from store to replica. Call Start for each
// database, then set store.OnAppend = u.Notify.
func NewUploader(store *Store, replica ReplicaClient, log *slog.Logger, opt Options) *Uploader {
	if opt.MaxInFlight <= 0 {
		opt.MaxInFlight = 8
		if _, ok := replica.(*FileReplica); ok {
			// Puts to a directory share one filesystem with the local
			// store and the database: run at once, their inode creation
			// and fsyncs only contend (measured: half the write rate of
			// one at a time). Falling behind merges instead.
			opt.MaxInFlight = 1
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	u := &Uploader{store: store, replica: replica, log: log, opt: opt, mergeEvery: mergeInterval,
		dbs: map[string]*shipState{}, ctx: ctx, cancel: cancel,
		bucket: tokenBucket{rate: opt.MaxPutRate, tokens: 1}}
	u.changed = sync.NewCond(&u.mu)
	u.wg.Add(1)
	go u.dispatch()
	return u
}

// Pause stops starting uploads until Resume (those running finish).
func (u *Uploader) Pause() {
	u.mu.Lock()
	u.paused = true
	u.mu.Unlock()
}

// Resume starts uploading again after Pause.
func (u *Uploader) Resume() {
	u.mu.Lock()
	u.paused = false
	u.mu.Unlock()
	u.changed.Broadcast()
}

// Notify tells the uploader a new commit of db is in the local store. It
// never waits on the network: it is called on the commit path.
func (u *Uploader) Notify(db string, txid ltx.TXID) {
	now := time.Now()
	u.mu.Lock()
	st := u.dbs[db]
	if st == nil {
		// A database created while mounted: find its replica position in
		// the background.
		st = &shipState{name: db, starting: true, done: map[ltx.TXID]ltx.TXID{}}
		u.dbs[db] = st
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			if err := u.Start(u.ctx, db, txid); err != nil {
				u.log.Error("cannot ship database", "db", db, "err", err)
				u.mu.Lock()
				st.err = err
				u.mu.Unlock()
			}
		}()
	}
	if txid > st.local {
		st.local = txid
		if n := len(st.commits); n < commitTimesDense || now.Sub(st.commits[n-1].at) >= time.Second {
			st.commits = append(st.commits, commitTime{txid, now})
		}
	}
	if backlog := st.local - st.pos; backlog >= max(st.warnAt, backlogWarn) && !st.starting {
		u.log.Warn("replication backlog growing", "db", db, "replica", u.replica.String(),
			"backlog", uint64(backlog), "replica_txid", st.pos, "local_txid", st.local, "last_error", st.err)
		st.warnAt = 2 * backlog
	}
	// Wake the dispatcher unless something else surely will: a completion
	// when every slot is busy, the backoff timer it armed after a failure.
	// (Not a spent PUT rate: its timer is armed only once the dispatcher
	// has work it cannot start.) At full speed this saves a wake-up per
	// commit.
	wake := !u.paused && u.inflight < u.opt.MaxInFlight && !(st.fails > 0 && now.Before(st.retryAt)) &&
		!(st.merging && now.Before(st.mergeAt))
	u.mu.Unlock()
	if wake {
		u.changed.Broadcast()
	}
}

// WaitAll blocks until the replica has every commit of db stored so far.
func (u *Uploader) WaitAll(ctx context.Context, db string) error {
	u.mu.Lock()
	st := u.dbs[db]
	var txid ltx.TXID
	if st != nil {
		txid = st.local
	}
	u.mu.Unlock()
	if txid == 0 {
		return nil // nothing stored yet (an fsync before the first commit)
	}
	return u.WaitFor(ctx, db, txid)
}

// Pos returns db's replica position.
func (u *Uploader) Pos(db string) ltx.TXID {
	u.mu.Lock()
	defer u.mu.Unlock()
	if st := u.dbs[db]; st != nil {
		return st.pos
	}
	return 0
}

// WaitFor blocks until the replica has every TXID of db up to txid, the
// context ends, or the uploader closes.
func (u *Uploader) WaitFor(ctx context.Context, db string, txid ltx.TXID) error {
	stop := context.AfterFunc(ctx, func() {
		u.mu.Lock()
		u.changed.Broadcast()
		u.mu.Unlock()
	})
	defer stop()
	u.mu.Lock()
	defer u.mu.Unlock()
	for {
		st := u.dbs[db]
		if st != nil && st.pos >= txid {
			return nil
		}
		if err := ctx.Err(); err != nil {
			if st != nil && st.err != nil {
				return fmt.Errorf("replica %s has %s up to txid %s, not %s: %w", u.replica, db, st.pos, txid, st.err)
			}
			return fmt.Errorf("replica %s has not acknowledged txid %s of %s: %w", u.replica, txid, db, err)
		}
		if u.closed {
			return errors.New("uploader closed")
		}
		u.changed.Wait()
	}
}

// dispatch starts uploads while there is room and work, and sleeps until a
// backoff or the PUT rate allows the next one.
func (u *Uploader) dispatch() {
	defer u.wg.Done()
	timer := time.AfterFunc(time.Hour, func() { u.changed.Broadcast() })
	defer timer.Stop()
	u.mu.Lock()
	defer u.mu.Unlock()
	for !u.closed {
		var wake time.Time
		later := func(t time.Time) {
			if wake.IsZero() || t.Before(wake) {
				wake = t
			}
		}
		for _, st := range u.sortedDBs() {
			if u.paused {
				break
			}
			now := time.Now()
			if st.fails > 0 && now.Before(st.retryAt) {
				later(st.retryAt)
				continue
			}
			for u.inflight < u.opt.MaxInFlight && u.hasWork(st) {
				if st.merging && now.Before(st.mergeAt) {
					later(st.mergeAt)
					break
				}
				if at := u.bucket.take(now); !at.IsZero() {
					later(at)
					break
				}
				u.launch(st, u.nextRange(st, now))
				if st.merging {
					st.mergeAt = now.Add(u.mergeEvery)
				}
			}
			if st.merging && now.Before(st.mergeAt) {
				later(st.mergeAt) // Notify does not wake the dispatcher meanwhile
			}
		}
		if !wake.IsZero() {
			timer.Reset(time.Until(wake))
		}
		u.changed.Wait()
	}
}

// hasWork reports whether st has a range to start now. Called with mu held.
func (u *Uploader) hasWork(st *shipState) bool {
	if st.starting || errors.Is(st.err, ErrDiverged) {
		return false
	}
	return len(st.todo) > 0 || (st.next <= st.local && st.fails == 0)
}

// nextRange picks the next range of st to upload and takes it out of todo
// or past next. Called with mu held, when hasWork.
func (u *Uploader) nextRange(st *shipState, now time.Time) txRange {
	// Past a bound the backlog merges until it has caught up and stayed
	// caught up for mergeCooldown: with merges only at the bound, a stream
	// the uploader cannot follow one file at a time would fall back to
	// single files as soon as it got under it, and it gets under it at
	// every pause of the writer (a checkpoint), so at full speed it would
	// spend most PUTs on single files and only catch up by merging again.
	// While merging, a single commit waiting still goes up alone: only
	// commits that arrived during the previous upload are merged.
	backlog := int64(st.local - st.pos)
	over := (u.opt.MaxBacklog > 0 && backlog > int64(u.opt.MaxBacklog)) ||
		(u.opt.MaxLag > 0 && len(st.commits) > 0 && now.Sub(st.commits[0].at) > u.opt.MaxLag) ||
		(u.opt.MaxBacklog > 0 && !st.merging && u.outpaced(st, now))
	switch {
	case over && !st.merging:
		st.merging, st.calmAt = true, time.Time{}
		u.log.Info("merging the replication backlog to catch up", "db", st.name, "replica", u.replica.String(),
			"backlog", uint64(backlog), "replica_txid", st.pos)
	case st.merging && backlog > int64(u.opt.MaxInFlight):
		st.calmAt = time.Time{}
	case st.merging && st.calmAt.IsZero():
		st.calmAt = now
	case st.merging && now.Sub(st.calmAt) >= mergeCooldown:
		st.merging = false
	}
	merge := u.opt.MaxPutRate > 0 || st.merging
	switch {
	case merge && st.inflight == 0 && st.local > st.pos+1:
		// Everything not in the replica, failed ranges included.
		r := txRange{st.pos + 1, min(st.local, st.pos+mergeMaxFiles)}
		st.next = max(st.next, r.max+1)
		st.todo = cutTodo(st.todo, r.max)
		return r
	case len(st.todo) > 0:
		r := st.todo[0]
		st.todo = st.todo[1:]
		return r
	case merge:
		r := txRange{st.next, min(st.local, st.next+mergeMaxFiles-1)}
		st.next = r.max + 1
		return r
	default:
		st.next++
		return txRange{st.next - 1, st.next - 1}
	}
}

// outpaced reports whether the commits of st waiting to be started arrive
// clearly faster than single-commit uploads can carry them (see
// outpacedMin). Called with mu held.
func (u *Uploader) outpaced(st *shipState, now time.Time) bool {
	waiting := int64(st.local) - int64(st.next) + 1
	if waiting < outpacedMin || u.putTime <= 0 {
		return false
	}
	// When the first of them was stored: st.commits holds the commits not
	// yet in the replica, oldest first (one a second under a long outage,
	// where this is an estimate and MaxBacklog has long been passed).
	i := sort.Search(len(st.commits), func(i int) bool { return st.commits[i].txid >= st.next })
	if i == len(st.commits) {
		return false
	}
	return outpacedBy(waiting, now.Sub(st.commits[i].at), u.putTime, u.opt.MaxInFlight)
}

// outpacedBy reports whether waiting commits that arrived over span would
// take more than outpacedFactor times span to put one at a time, at putTime
// each and inFlight at once.
func outpacedBy(waiting int64, span, putTime time.Duration, inFlight int) bool {
	return waiting >= outpacedMin && time.Duration(waiting)*putTime > outpacedFactor*time.Duration(inFlight)*span
}

// cutTodo drops from todo what lies at or below txid.
func cutTodo(todo []txRange, txid ltx.TXID) []txRange {
	out := todo[:0]
	for _, r := range todo {
		if r.max > txid {
			r.min = max(r.min, txid+1)
			out = append(out, r)
		}
	}
	return out
}

func (u *Uploader) sortedDBs() []*shipState {
	out := make([]*shipState, 0, len(u.dbs))
	for _, st := range u.dbs {
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// launch uploads one range in the background. Called with mu held.
func (u *Uploader) launch(st *shipState, r txRange) {
	u.inflight++
	st.inflight++
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		start := time.Now()
		hi, err := u.upload(st.name, r)
		took := time.Since(start)
		u.mu.Lock()
		defer u.mu.Unlock()
		u.inflight--
		st.inflight--
		if err != nil {
			u.failed(st, r, err)
		} else {
			if r.min == r.max {
				if u.putTime == 0 {
					u.putTime = took
				} else {
					u.putTime += (took - u.putTime) / 4
				}
			}
			u.shipped(st, r, hi)
		}
		u.changed.Broadcast()
	}()
}

// failed puts r back to be retried after a backoff. Called with mu held.
func (u *Uploader) failed(st *shipState, r txRange, err error) {
	u.stats.Failures++
	st.err = err
	st.fails++
	backoff := min(time.Duration(1<<min(st.fails, 6))*100*time.Millisecond, maxBackoff)
	backoff += time.Duration(rand.Int64N(int64(backoff / 2))) // jitter
	st.retryAt = time.Now().Add(backoff)
	if r.max > st.pos {
		r.min = max(r.min, st.pos+1)
		st.todo = append(st.todo, r)
		slices.SortFunc(st.todo, func(a, b txRange) int { return cmpTXID(a.min, b.min) })
	}
	if st.fails == 1 || st.fails%20 == 0 {
		u.log.Warn("upload failed; retrying", "db", st.name, "txid", r.max, "replica", u.replica.String(), "err", err, "attempt", st.fails)
	}
}

// shipped records that r.min..hi is in the replica (hi < r.max when a merge
// stopped early: the rest goes back to todo) and moves the position.
// Called with mu held.
func (u *Uploader) shipped(st *shipState, r txRange, hi ltx.TXID) {
	u.stats.PUTs++
	if hi > r.min {
		u.stats.MergedPUTs++
		u.stats.MergedCommits += uint64(hi - r.min + 1)
	}
	if st.fails > 0 {
		u.log.Info("replica reachable again", "db", st.name, "replica", u.replica.String())
	}
	st.err, st.fails = nil, 0
	if hi < r.max {
		st.todo = append([]txRange{{hi + 1, r.max}}, st.todo...)
	}
	st.done[r.min] = max(st.done[r.min], hi)
	before := st.pos
	for moved := true; moved; {
		moved = false
		for lo, top := range st.done {
			if lo <= st.pos+1 {
				st.pos = max(st.pos, top)
				delete(st.done, lo)
				moved = true
			}
		}
	}
	if st.pos > before {
		now := time.Now()
		if st.merging && st.calmAt.IsZero() && int64(st.local-st.pos) <= int64(u.opt.MaxInFlight) {
			st.calmAt = now
		}
		i := 0
		for i < len(st.commits) && st.commits[i].txid <= st.pos {
			i++
		}
		if i > 0 {
			st.ackLag = now.Sub(st.commits[i-1].at)
			st.commits = st.commits[i:]
		}
		st.todo = cutTodo(st.todo, st.pos)
	}
	if st.warnAt > backlogWarn && st.local-st.pos < backlogWarn/2 {
		u.log.Info("replica caught up", "db", st.name, "replica", u.replica.String(), "txid", st.pos)
		st.warnAt = 0
	}
}

// upload puts one range: one stored commit as it is, several merged. An
// object that is already there (a previous run uploaded it before a crash)
// counts if it ends in the same state. It returns the last TXID put.
func (u *Uploader) upload(db string, r txRange) (ltx.TXID, error) {
	ctx, cancel := context.WithTimeout(u.ctx, 60*time.Second)
	defer cancel()
	var data []byte
	var err error
	hi := r.max
	if r.min == r.max {
		data, err = u.store.ReadLTX(db, r.min, r.max)
	} else {
		scratch := u.takeScratch()
		data, hi, err = mergeLocal(ctx, u.store, db, r.min, r.max, scratch)
		u.putScratch(scratch)
		if err != nil && ctx.Err() == nil {
			// A merge that fails on local data would fail again: ship
			// the first commit alone, so the replica still moves on.
			u.log.Warn("cannot merge commits; shipping one alone", "db", db, "from", r.min, "to", r.max, "err", err)
			data, err = u.store.ReadLTX(db, r.min, r.min)
			hi = r.min
		}
	}
	if err != nil {
		return 0, err
	}
	var hdr ltx.Header
	if err := hdr.UnmarshalBinary(data); err != nil {
		return 0, fmt.Errorf("local %s: %w", LTXPath(db, 0, r.min, hi), err)
	}
	err = u.replica.PutLTX(ctx, db, 0, r.min, hi, data, time.UnixMilli(hdr.Timestamp))
	if errors.Is(err, ErrExists) {
		err = u.sameAs(ctx, db, 0, txRange{r.min, hi}, postApply(data))
	}
	return hi, err
}

// takeScratch returns a read buffer for a merge; putScratch gives it back.
// The buffers keep their memory between merges: a merge reads megabytes,
// and fresh memory each time cost more in page faults than the copy.
func (u *Uploader) takeScratch() *[]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	if n := len(u.scratch); n > 0 {
		b := u.scratch[n-1]
		u.scratch = u.scratch[:n-1]
		return b
	}
	return new([]byte)
}

func (u *Uploader) putScratch(b *[]byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.scratch) < 2 {
		u.scratch = append(u.scratch, b)
	}
}

// Pending returns, per database, how many TXIDs the replica does not have yet.
func (u *Uploader) Pending() map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := map[string]int{}
	for name, st := range u.dbs {
		if n := int(st.local - st.pos); n > 0 {
			out[name] = n
		}
	}
	return out
}

// Close waits up to timeout for every stored commit to reach the replica,
// then stops. It returns what is still pending (shipped at the next start).
func (u *Uploader) Close(timeout time.Duration) map[string]int {
	deadline := time.Now().Add(timeout)
	u.mu.Lock()
	for time.Now().Before(deadline) && u.pendingLocked() {
		t := time.AfterFunc(100*time.Millisecond, func() { u.changed.Broadcast() })
		u.changed.Wait()
		t.Stop()
	}
	u.closed = true
	u.mu.Unlock()
	u.cancel()
	u.changed.Broadcast()
	u.wg.Wait()
	return u.Pending()
}

func (u *Uploader) pendingLocked() bool {
	for _, st := range u.dbs {
		switch {
		case errors.Is(st.err, ErrDiverged):
		case st.starting && st.err == nil:
			return true // a database created while mounted: its position is still being read
		case !st.starting && st.local > st.pos:
			return true
		}
	}
	return false
}
