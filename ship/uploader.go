package ship

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
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
// Invariants, under mu: for each database, every TXID <= pos is in the
// replica; every TXID in (pos, next) is uploading, uploaded (done) or waiting
// for a retry (retry); TXIDs >= next are only local. A local file is never
// removed by the uploader, so nothing is lost while the replica is away.
type Uploader struct {
	store   *Store
	replica ReplicaClient
	log     *slog.Logger

	// MaxInFlight bounds concurrent uploads (all databases together).
	MaxInFlight int

	mu       sync.Mutex
	changed  *sync.Cond // broadcast on every position change or new work
	dbs      map[string]*shipState
	inflight int
	closed   bool
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

type shipState struct {
	name     string
	pos      ltx.TXID // gap-free position in the replica
	next     ltx.TXID // next TXID to start
	local    ltx.TXID // newest TXID in the local store
	done     map[ltx.TXID]bool
	retry    []retryItem
	err      error    // the last upload error, cleared by a success
	fails    int      // consecutive failures, for backoff
	starting bool     // Start has not read the replica's position yet
	warnAt   ltx.TXID // backlog size that triggers the next warning
}

// backlogWarn is the backlog (commits not yet in the replica) at which the
// uploader first warns; each later warning waits for twice the backlog.
const backlogWarn = 1000

type retryItem struct {
	txid ltx.TXID
	at   time.Time
}

// ErrDiverged is returned when the replica holds a different history than
// the local store at the same TXID: sqlfs refuses to overwrite it.
var ErrDiverged = errors.New("replica history differs from local history")

// NewUploader returns an uploader from store to replica. Call Start for each
// database, then set store.OnAppend = u.Notify.
func NewUploader(store *Store, replica ReplicaClient, log *slog.Logger) *Uploader {
	ctx, cancel := context.WithCancel(context.Background())
	u := &Uploader{store: store, replica: replica, log: log, MaxInFlight: 8,
		dbs: map[string]*shipState{}, ctx: ctx, cancel: cancel}
	u.changed = sync.NewCond(&u.mu)
	u.wg.Add(1)
	go u.dispatch()
	return u
}

// Start resumes shipping db: it reads the replica's position and checks that
// the replica's newest file agrees with local history at that TXID.
func (u *Uploader) Start(ctx context.Context, db string, localLast ltx.TXID) error {
	files, err := u.replica.LTXFiles(ctx, db, 0)
	if err != nil {
		return fmt.Errorf("replica %s: list %s: %w", u.replica, db, err)
	}
	present := map[ltx.TXID]bool{}
	for _, f := range files {
		if f.MinTXID == f.MaxTXID {
			present[f.MaxTXID] = true
		}
	}
	// Retention removes level-0 files the levels above have merged: the
	// position starts where those reach.
	pos, err := CompactedPos(ctx, u.replica, db)
	if err != nil {
		return fmt.Errorf("replica %s: list %s: %w", u.replica, db, err)
	}
	for present[pos+1] {
		pos++
	}
	// A replica that is ahead of local history, or that disagrees with it
	// at its position, belongs to another history.
	if pos > localLast {
		return fmt.Errorf("%w: replica %s has %s up to txid %s, local history ends at %s",
			ErrDiverged, u.replica, db, pos, localLast)
	}
	if pos > 0 && present[pos] {
		if err := u.sameFile(ctx, db, pos); err != nil {
			return err
		}
	}
	// Files past a gap (uploaded out of order before a crash) are put
	// again: ErrExists and a comparison accept them.
	u.mu.Lock()
	st := u.dbs[db]
	if st == nil {
		st = &shipState{name: db}
		u.dbs[db] = st
	}
	st.pos, st.next, st.done, st.starting = pos, pos+1, map[ltx.TXID]bool{}, false
	st.local = max(st.local, localLast)
	u.mu.Unlock()
	u.changed.Broadcast()
	if localLast > pos {
		u.log.Info("shipping backlog", "db", db, "replica", u.replica.String(), "from", pos+1, "to", localLast)
	}
	return nil
}

// sameFile checks that the replica's file for txid carries the same
// post-apply checksum as the local one.
func (u *Uploader) sameFile(ctx context.Context, db string, txid ltx.TXID) error {
	local, err := u.store.ReadLTX(db, txid, txid)
	if errors.Is(err, ErrNotFound) {
		return nil // merged and removed locally by retention: nothing to compare
	} else if err != nil {
		return fmt.Errorf("local history of %s at %s: %w", db, txid, err)
	}
	rc, err := u.replica.OpenLTX(ctx, db, 0, txid, txid)
	if err != nil {
		return fmt.Errorf("replica %s: read %s: %w", u.replica, LTXPath(db, 0, txid, txid), err)
	}
	remote, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return fmt.Errorf("replica %s: read %s: %w", u.replica, LTXPath(db, 0, txid, txid), err)
	}
	if !bytes.Equal(trailerOf(local), trailerOf(remote)) {
		return fmt.Errorf("%w: %s at txid %s in replica %s (refusing to overwrite it; point -replica elsewhere or restore from it)",
			ErrDiverged, db, txid, u.replica)
	}
	return nil
}

func trailerOf(b []byte) []byte {
	if len(b) < ltx.TrailerSize {
		return nil
	}
	return b[len(b)-ltx.TrailerSize:]
}

// Notify tells the uploader a new commit of db is in the local store. It
// never waits on the network: it is called on the commit path.
func (u *Uploader) Notify(db string, txid ltx.TXID) {
	u.mu.Lock()
	st := u.dbs[db]
	if st == nil {
		// A database created while mounted: find its replica position in
		// the background.
		st = &shipState{name: db, starting: true, done: map[ltx.TXID]bool{}}
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
	}
	if backlog := st.local - st.pos; backlog >= max(st.warnAt, backlogWarn) && !st.starting {
		u.log.Warn("replication backlog growing", "db", db, "replica", u.replica.String(),
			"backlog", uint64(backlog), "replica_txid", st.pos, "local_txid", st.local, "last_error", st.err)
		st.warnAt = 2 * backlog
	}
	u.mu.Unlock()
	u.changed.Broadcast()
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

// dispatch starts uploads while there is room and work, and schedules retries.
func (u *Uploader) dispatch() {
	defer u.wg.Done()
	timer := time.AfterFunc(time.Hour, func() { u.changed.Broadcast() })
	defer timer.Stop()
	u.mu.Lock()
	defer u.mu.Unlock()
	for !u.closed {
		started := false
		var nextRetry time.Time
		for _, st := range u.sortedDBs() {
			now := time.Now()
			for i := 0; i < len(st.retry) && u.inflight < u.MaxInFlight; {
				if r := st.retry[i]; !r.at.After(now) {
					st.retry = append(st.retry[:i], st.retry[i+1:]...)
					u.launch(st, r.txid)
					started = true
					continue
				} else if nextRetry.IsZero() || r.at.Before(nextRetry) {
					nextRetry = r.at
				}
				i++
			}
			for !st.starting && st.next <= st.local && u.inflight < u.MaxInFlight && st.fails == 0 {
				u.launch(st, st.next)
				st.next++
				started = true
			}
		}
		if started {
			continue
		}
		if !nextRetry.IsZero() {
			timer.Reset(time.Until(nextRetry))
		}
		u.changed.Wait()
	}
}

func (u *Uploader) sortedDBs() []*shipState {
	out := make([]*shipState, 0, len(u.dbs))
	for _, st := range u.dbs {
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// launch uploads one TXID in the background. Called with mu held.
func (u *Uploader) launch(st *shipState, txid ltx.TXID) {
	u.inflight++
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		err := u.upload(st.name, txid)
		u.mu.Lock()
		defer u.mu.Unlock()
		u.inflight--
		if err != nil {
			st.err = err
			st.fails++
			backoff := min(time.Duration(1<<min(st.fails, 6))*100*time.Millisecond, 5*time.Second)
			backoff += time.Duration(rand.Int64N(int64(backoff / 2))) // jitter
			st.retry = append(st.retry, retryItem{txid, time.Now().Add(backoff)})
			if st.fails == 1 || st.fails%20 == 0 {
				u.log.Warn("upload failed; retrying", "db", st.name, "txid", txid, "replica", u.replica.String(), "err", err, "attempt", st.fails)
			}
		} else {
			if st.fails > 0 {
				u.log.Info("replica reachable again", "db", st.name, "replica", u.replica.String())
			}
			st.err, st.fails = nil, 0
			st.done[txid] = true
			for st.done[st.pos+1] {
				delete(st.done, st.pos+1)
				st.pos++
			}
			if st.warnAt > backlogWarn && st.local-st.pos < backlogWarn/2 {
				u.log.Info("replica caught up", "db", st.name, "replica", u.replica.String(), "txid", st.pos)
				st.warnAt = 0
			}
		}
		u.changed.Broadcast()
	}()
}

// upload puts one commit. An object that is already there (a previous run
// uploaded it before a crash) counts if it is the same file.
func (u *Uploader) upload(db string, txid ltx.TXID) error {
	data, err := u.store.ReadLTX(db, txid, txid)
	if err != nil {
		return err
	}
	var hdr ltx.Header
	if err := hdr.UnmarshalBinary(data); err != nil {
		return fmt.Errorf("local %s: %w", LTXPath(db, 0, txid, txid), err)
	}
	ctx, cancel := context.WithTimeout(u.ctx, 60*time.Second)
	defer cancel()
	err = u.replica.PutLTX(ctx, db, 0, txid, txid, data, time.UnixMilli(hdr.Timestamp))
	if errors.Is(err, ErrExists) {
		return u.sameFile(ctx, db, txid)
	}
	return err
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
		if st.local > st.pos && !st.starting {
			return true
		}
	}
	return false
}
