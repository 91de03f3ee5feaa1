package ship

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/superfly/ltx"
)

// PlanFunc plans the files that rebuild db at target (restore.Plan); the
// leveler uses it for snapshots. It is passed in because restore reads
// replicas and ship must not depend on it.
type PlanFunc func(ctx context.Context, r Replica, db string, target ltx.TXID) ([]*ltx.FileInfo, error)

// LevelerConfig says where a Leveler works.
type LevelerConfig struct {
	// Target is the history compacted and trimmed: a replica, or the local
	// store's files.
	Target *Index
	// Local, if set, is read instead of Target for any file it still holds.
	Local  *Store
	Levels Levels
	Plan   PlanFunc
	// Keep, if set, bounds level-0 retention: files ending past Keep(db)
	// stay (the local store keeps what the replica has not shipped and
	// compacted).
	Keep func(db string) ltx.TXID
	Log  *slog.Logger
}

// Leveler compacts each database's history into levels, takes snapshots
// and applies retention, in the background: one goroutine per Leveler,
// driven by timers aligned to each level's interval. It never runs on the
// commit or upload path, and it makes no request when nothing changed.
//
// Crash safety: a level file is written with a conditional put of the
// complete file before anything it replaces is deleted, and a file is
// deleted only when the files that stay still reach every TXID retention
// promises (see expired), so a crash at any point leaves a consistent
// history with at most some files kept longer.
type Leveler struct {
	cfg LevelerConfig
	src fileSource

	mu       sync.Mutex
	dbs      map[string]bool
	stats    LevelerStats
	verified map[fileKey]bool // level files of the target known to be sound

	kick   chan struct{}
	cancel context.CancelFunc
	ctx    context.Context
	done   chan struct{}
}

// LevelerStats counts a Leveler's work.
type LevelerStats struct {
	Compactions int // level files written (snapshots included)
	Snapshots   int
	Deleted     int // files removed by retention
	Passes      int // retention passes
	Errors      int
}

// NewLeveler returns a stopped Leveler; Add databases, then Start it.
func NewLeveler(cfg LevelerConfig) *Leveler {
	ctx, cancel := context.WithCancel(context.Background())
	return &Leveler{cfg: cfg, src: fileSource{target: cfg.Target, local: cfg.Local},
		dbs: map[string]bool{}, verified: map[fileKey]bool{}, kick: make(chan struct{}, 1), ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

// Add makes db's history part of the Leveler's work. It is cheap and can be
// called on every commit.
func (l *Leveler) Add(db string) {
	l.mu.Lock()
	l.dbs[db] = true
	l.mu.Unlock()
}

// Stats returns the counters so far.
func (l *Leveler) Stats() LevelerStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// Start runs the Leveler until Close.
func (l *Leveler) Start() { go l.run() }

// Close stops the Leveler, abandoning a pass in progress (it leaves the
// history consistent), and waits for it.
func (l *Leveler) Close() {
	l.cancel()
	<-l.done
}

func align(now time.Time, d time.Duration) time.Time { return now.Truncate(d).Add(d) }

// backoff is a database whose last pass failed: it is retried on its own at
// at, with every level due, and left out of the scheduled passes until then.
type backoff struct {
	fails int
	at    time.Time
	snap  bool // the failed pass was to take a snapshot
}

// retryBackoff is the wait before retry number fails: the level-1 interval
// (the tick), doubling, at most maxRetryBackoff (or the tick if longer).
func retryBackoff(tick time.Duration, fails int) time.Duration {
	d := tick << min(fails-1, 16)
	return min(d, max(maxRetryBackoff, tick))
}

const maxRetryBackoff = 30 * time.Minute

func (l *Leveler) run() {
	defer close(l.done)
	lv := l.cfg.Levels
	now := time.Now()
	next := make([]time.Time, lv.top())
	for i, d := range lv.Intervals {
		next[i] = align(now, d)
	}
	nextSnap := align(now, lv.Snapshot)
	nextTick := align(now, lv.tick())
	retries := map[string]*backoff{}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wake := nextSnap
		for _, t := range append(next, nextTick) {
			if t.Before(wake) {
				wake = t
			}
		}
		for _, r := range retries {
			if r.at.Before(wake) {
				wake = r.at
			}
		}
		timer.Reset(time.Until(wake))
		select {
		case <-l.ctx.Done():
			return
		case <-timer.C:
		case <-l.kick:
		}
		now = time.Now()
		due := make([]bool, len(next))
		scheduled := false
		for i, t := range next {
			if !now.Before(t) {
				due[i], next[i], scheduled = true, align(now, lv.Intervals[i]), true
			}
		}
		snap := !now.Before(nextSnap)
		if snap {
			nextSnap, scheduled = align(now, lv.Snapshot), true
		}
		if !now.Before(nextTick) {
			nextTick, scheduled = align(now, lv.tick()), true
		}
		l.mu.Lock()
		dbs := make([]string, 0, len(l.dbs))
		for db := range l.dbs {
			dbs = append(dbs, db)
		}
		l.mu.Unlock()
		slices.Sort(dbs)
		all := make([]bool, len(next))
		for i := range all {
			all[i] = true
		}
		for _, db := range dbs {
			r := retries[db]
			dbDue, dbSnap := due, snap
			if r != nil {
				if now.Before(r.at) {
					continue // backing off
				}
				dbDue, dbSnap = all, snap || r.snap
			} else if !scheduled {
				continue
			}
			err := l.Pass(l.ctx, db, now, dbDue, dbSnap)
			if l.ctx.Err() != nil {
				return
			}
			if errors.Is(err, ErrLeaseLost) {
				l.cfg.Log.Error("compaction and retention stopped: another sqlfs holds the replica lease", "replica", l.cfg.Target.String())
				return
			}
			if err == nil {
				if r != nil {
					l.cfg.Log.Info("compaction and retention work again", "db", db, "replica", l.cfg.Target.String(), "after_failures", r.fails)
					delete(retries, db)
				}
				continue
			}
			if r == nil {
				r = &backoff{}
				retries[db] = r
			}
			r.fails++
			r.snap = dbSnap
			wait := retryBackoff(lv.tick(), r.fails)
			r.at = time.Now().Add(wait)
			l.mu.Lock()
			l.stats.Errors++
			l.mu.Unlock()
			// The listing in memory may be what is wrong (a file gone
			// from the replica): the retry lists the replica again.
			l.cfg.Target.Forget(db)
			l.cfg.Log.Warn("compaction or retention failed; retrying", "db", db, "replica", l.cfg.Target.String(),
				"err", err, "attempt", r.fails, "retry_in", wait.Round(time.Millisecond))
		}
	}
}

// Pass runs one round for db: compaction of each level marked due (lowest
// first, so a level sees what the one below just wrote), a snapshot if
// snap, then retention.
func (l *Leveler) Pass(ctx context.Context, db string, now time.Time, due []bool, snap bool) error {
	for i, d := range due {
		if !d {
			continue
		}
		if err := l.compactLevel(ctx, db, i+1); err != nil {
			return fmt.Errorf("compact level %d of %s: %w", i+1, db, err)
		}
	}
	if snap {
		if err := l.snapshot(ctx, db); err != nil {
			return fmt.Errorf("snapshot of %s: %w", db, err)
		}
	}
	if err := l.retain(ctx, db, now); err != nil {
		return fmt.Errorf("retention of %s: %w", db, err)
	}
	return nil
}

// Compaction bounds: one level file merges at most this many files or
// bytes; a longer window becomes several files.
const (
	maxCompactInputs = 4096
	maxCompactBytes  = 256 << 20
)

// compactLevel merges the level n-1 files written since the newest level n
// file into new level n files.
func (l *Leveler) compactLevel(ctx context.Context, db string, n int) error {
	src, err := l.cfg.Target.LTXFiles(ctx, db, n-1)
	if err != nil {
		return err
	}
	dst, err := l.cfg.Target.LTXFiles(ctx, db, n)
	if err != nil {
		return err
	}
	snaps, err := l.cfg.Target.LTXFiles(ctx, db, SnapshotLevel)
	if err != nil {
		return err
	}
	var start ltx.TXID
	if len(dst) > 0 {
		start = dst[len(dst)-1].MaxTXID
	}
	chain := chainFrom(src, start)
	// Retention may have cut the level below at a snapshot past start:
	// continue from there.
	for _, s := range snaps {
		if len(chain) > 0 {
			break
		}
		if s.MaxTXID > start {
			chain = chainFrom(src, s.MaxTXID)
		}
	}
	if len(chain) == 0 && len(dst) == 0 && len(src) > 0 {
		chain = chainFrom(src, src[0].MinTXID-1) // history that starts past TXID 1
	}
	for len(chain) > 0 {
		var size int64
		k := 0
		for k < len(chain) && k < maxCompactInputs && (k == 0 || size+chain[k].Size <= maxCompactBytes) {
			size += chain[k].Size
			k++
		}
		merged, err := l.writeLevel(ctx, db, n, chain[:k])
		if err != nil {
			return err
		}
		chain = chain[merged:]
	}
	return nil
}

// chainFrom returns the files of one level that continue a history ending
// at pos: the first starts at pos+1 (or is the earliest file that spans
// it), each next one right after the previous; it stops at a gap.
func chainFrom(files []*ltx.FileInfo, pos ltx.TXID) []*ltx.FileInfo {
	var chain []*ltx.FileInfo
	byMin := map[ltx.TXID]*ltx.FileInfo{}
	for _, fi := range files {
		if fi.MaxTXID <= pos {
			continue
		}
		if cur := byMin[fi.MinTXID]; cur == nil || fi.MaxTXID > cur.MaxTXID {
			byMin[fi.MinTXID] = fi
		}
		if fi.MinTXID <= pos && (len(chain) == 0 || fi.MaxTXID > chain[0].MaxTXID) {
			chain = []*ltx.FileInfo{fi} // spans pos
		}
	}
	if first := byMin[pos+1]; first != nil {
		chain = []*ltx.FileInfo{first}
	}
	if len(chain) == 0 {
		return nil
	}
	for next := byMin[chain[len(chain)-1].MaxTXID+1]; next != nil; next = byMin[next.MaxTXID+1] {
		chain = append(chain, next)
	}
	return chain
}

// writeLevel merges files, or the longest prefix of them that merges
// exactly (see checkWindow), into one level n file and puts it. It returns
// how many of files the level file covers.
func (l *Leveler) writeLevel(ctx context.Context, db string, n int, files []*ltx.FileInfo) (int, error) {
	minTXID, maxTXID := files[0].MinTXID, files[len(files)-1].MaxTXID
	data, err := l.localCopy(db, n, minTXID, maxTXID)
	if err != nil {
		return 0, err
	}
	if data == nil {
		inputs := make([][]byte, len(files))
		for i, fi := range files {
			if inputs[i], err = l.src.read(ctx, db, fi); err != nil {
				return 0, err
			}
		}
		data, err = mergeLTX(ctx, inputs)
		var unsafe *unsafeWindowError
		if errors.As(err, &unsafe) {
			// The window cannot become one file; it becomes two or more,
			// split where the database shrank, and compaction goes on.
			files, inputs = files[:unsafe.safe], inputs[:unsafe.safe]
			l.cfg.Log.Warn("compaction window split: merging it whole would not reproduce it", "db", db, "level", n,
				"from", minTXID, "to", maxTXID, "first_part_to", files[len(files)-1].MaxTXID, "replica", l.cfg.Target.String(), "why", err)
			maxTXID = files[len(files)-1].MaxTXID
			data, err = mergeLTX(ctx, inputs)
		}
		if err != nil {
			return 0, fmt.Errorf("merge %s through %s: %w", minTXID, maxTXID, err)
		}
	} else if err := l.checkCopy(ctx, db, data, files); err != nil {
		return 0, fmt.Errorf("local copy of level %d file %s through %s: %w", n, minTXID, maxTXID, err)
	}
	return len(files), l.put(ctx, db, n, minTXID, maxTXID, data)
}

// checkCopy verifies a file taken from the local store against the first
// and last of the files it replaces in the target.
func (l *Leveler) checkCopy(ctx context.Context, db string, data []byte, files []*ltx.FileInfo) error {
	first, err := l.summary(ctx, db, files[0])
	if err != nil {
		return err
	}
	last := first
	if len(files) > 1 {
		if last, err = l.summary(ctx, db, files[len(files)-1]); err != nil {
			return err
		}
	}
	return checkMerged(data, first, last)
}

// summary reads and decodes one file of the target's history.
func (l *Leveler) summary(ctx context.Context, db string, fi *ltx.FileInfo) (ltxSummary, error) {
	data, err := l.src.read(ctx, db, fi)
	if err != nil {
		return ltxSummary{}, err
	}
	s, err := readSummary(data)
	if err != nil {
		return ltxSummary{}, fmt.Errorf("%s: %w", LTXPath(db, fi.Level, fi.MinTXID, fi.MaxTXID), err)
	}
	return s, nil
}

// localCopy returns the local store's file of the same level and range
// when the replica is the target: the local leveler merged the same files
// a moment ago, so the replica's copy costs no reads.
func (l *Leveler) localCopy(db string, n int, minTXID, maxTXID ltx.TXID) ([]byte, error) {
	if l.cfg.Local == nil || l.cfg.Target.ReplicaClient == l.cfg.Local.FileReplica {
		return nil, nil
	}
	data, err := os.ReadFile(filepath.Join(l.cfg.Local.Root, LTXPath(db, n, minTXID, maxTXID)))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return data, err
}

// put stores a level file; one already there (a pass cut short by a crash
// stored it) is as good.
func (l *Leveler) put(ctx context.Context, db string, n int, minTXID, maxTXID ltx.TXID, data []byte) error {
	var hdr ltx.Header
	if err := hdr.UnmarshalBinary(data); err != nil {
		return err
	}
	err := l.cfg.Target.PutLTX(ctx, db, n, minTXID, maxTXID, data, time.UnixMilli(hdr.Timestamp))
	if err != nil && !errors.Is(err, ErrExists) {
		return err
	}
	l.mu.Lock()
	if err == nil {
		// The bytes just stored were checked; a file that was already
		// there is checked when retention first relies on it.
		l.verified[fileKey{db, n, minTXID, maxTXID}] = true
	}
	l.stats.Compactions++
	if n == SnapshotLevel {
		l.stats.Snapshots++
	}
	l.mu.Unlock()
	l.cfg.Log.Debug("level file written", "db", db, "level", n, "min", minTXID, "max", maxTXID, "size", len(data), "replica", l.cfg.Target.String())
	return nil
}

// snapshot writes the database as of the newest level-1 boundary (the
// newest level-0 file without levels) as one level-9 file covering TXIDs 1
// through it, merged from the fewest files that rebuild it.
func (l *Leveler) snapshot(ctx context.Context, db string) error {
	base := 1
	if l.cfg.Levels.top() == 0 {
		base = 0
	}
	files, err := l.cfg.Target.LTXFiles(ctx, db, base)
	if err != nil || len(files) == 0 {
		return err
	}
	at := files[len(files)-1].MaxTXID
	snaps, err := l.cfg.Target.LTXFiles(ctx, db, SnapshotLevel)
	if err != nil {
		return err
	}
	if len(snaps) > 0 && snaps[len(snaps)-1].MaxTXID >= at {
		return nil // nothing new
	}
	data, err := l.localCopy(db, SnapshotLevel, 1, at)
	if err != nil {
		return err
	}
	plan, err := l.cfg.Plan(ctx, l.cfg.Target, db, at)
	if err != nil {
		return err
	}
	if data == nil {
		inputs := make([][]byte, len(plan))
		for i, fi := range plan {
			if inputs[i], err = l.src.read(ctx, db, fi); err != nil {
				return err
			}
		}
		if data, err = mergeLTX(ctx, inputs); err != nil {
			return err
		}
	} else if err := l.checkCopy(ctx, db, data, plan); err != nil {
		return fmt.Errorf("local copy of snapshot at %s: %w", at, err)
	}
	// A snapshot replaces history: the pages themselves must also add up
	// to the state it claims.
	if err := checkSnapshot(data); err != nil {
		return err
	}
	return l.put(ctx, db, SnapshotLevel, 1, at, data)
}

// retain deletes what expired says has gone out of retention.
func (l *Leveler) retain(ctx context.Context, db string, now time.Time) error {
	var files [SnapshotLevel + 1][]*ltx.FileInfo
	for level := range files {
		var err error
		if files[level], err = l.cfg.Target.LTXFiles(ctx, db, level); err != nil {
			return err
		}
	}
	// Retention relies only on level files known to be sound: a file it
	// cannot vouch for neither replaces level 0 nor is deleted.
	for level := 1; level <= SnapshotLevel; level++ {
		files[level] = l.sound(ctx, db, files[level])
	}
	keep := ^ltx.TXID(0)
	if l.cfg.Keep != nil {
		keep = l.cfg.Keep(db)
	}
	gone := expired(&files, l.cfg.Levels, now, keep)
	if len(gone) > 0 {
		if err := l.cfg.Target.DeleteLTX(ctx, db, gone); err != nil {
			return err
		}
	}
	l.mu.Lock()
	l.stats.Passes++
	l.stats.Deleted += len(gone)
	l.mu.Unlock()
	if len(gone) > 0 {
		l.cfg.Log.Info("retention pass", "db", db, "deleted", len(gone), "replica", l.cfg.Target.String())
	}
	return nil
}

// sound returns the files of one level above 0 that were verified: those
// this Leveler checked before storing them, and those found in the target
// (stored by an earlier run) once they are read back and decode, hold the
// TXIDs their names say and, for snapshots, pages that add up to their
// post-apply checksum. A file that fails is logged and left alone.
func (l *Leveler) sound(ctx context.Context, db string, files []*ltx.FileInfo) []*ltx.FileInfo {
	var out []*ltx.FileInfo
	for _, fi := range files {
		k := fileKey{db, fi.Level, fi.MinTXID, fi.MaxTXID}
		l.mu.Lock()
		ok, known := l.verified[k]
		l.mu.Unlock()
		if !known {
			if err := l.verifyStored(ctx, db, fi); err != nil {
				if ctx.Err() != nil {
					return out
				}
				l.cfg.Log.Warn("level file failed verification; retention keeps what it would replace",
					"db", db, "file", LTXPath(db, fi.Level, fi.MinTXID, fi.MaxTXID), "replica", l.cfg.Target.String(), "err", err)
			} else {
				ok = true
			}
			l.mu.Lock()
			l.verified[k] = ok
			l.mu.Unlock()
		}
		if ok {
			out = append(out, fi)
		}
	}
	return out
}

// verifyStored reads a level file back from the target and checks it.
func (l *Leveler) verifyStored(ctx context.Context, db string, fi *ltx.FileInfo) error {
	rc, err := l.cfg.Target.OpenLTX(ctx, db, fi.Level, fi.MinTXID, fi.MaxTXID)
	if err != nil {
		return err
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return err
	}
	s, err := readSummary(data)
	if err != nil {
		return err
	}
	if s.hdr.MinTXID != fi.MinTXID || s.hdr.MaxTXID != fi.MaxTXID {
		return fmt.Errorf("holds txids %s through %s", s.hdr.MinTXID, s.hdr.MaxTXID)
	}
	if fi.Level == SnapshotLevel {
		return checkSnapshot(data)
	}
	return nil
}

// Compacted returns the furthest TXID of db that verified files of levels
// above 0 reach in the Leveler's target (from memory): level-0 files up to
// it are merged into files retention may rely on.
func (l *Leveler) Compacted(db string) ltx.TXID {
	var upper []*ltx.FileInfo
	for level := 1; level <= SnapshotLevel; level++ {
		files, err := l.cfg.Target.LTXFiles(context.Background(), db, level)
		if err != nil {
			return 0
		}
		l.mu.Lock()
		for _, fi := range files {
			if l.verified[fileKey{db, fi.Level, fi.MinTXID, fi.MaxTXID}] {
				upper = append(upper, fi)
			}
		}
		l.mu.Unlock()
	}
	if reach := ReachFrom0(upper); len(reach) > 0 {
		return reach[len(reach)-1]
	}
	return 0
}

// fileKey names one file of a database's history.
type fileKey struct {
	db               string
	level            int
	minTXID, maxTXID ltx.TXID
}
