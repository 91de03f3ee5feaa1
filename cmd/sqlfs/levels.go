package main

import (
	"flag"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/superfly/ltx"

	"github.com/sqlfs/sqlfs/restore"
	"github.com/sqlfs/sqlfs/ship"
)

// levelFlags are mount's flags for compaction levels, snapshots and
// retention.
type levelFlags struct {
	intervals string
	lv        ship.Levels
}

func addLevelFlags(fs *flag.FlagSet) *levelFlags {
	lf := &levelFlags{lv: ship.DefaultLevels()}
	fs.StringVar(&lf.intervals, "levels", "30s,5m,1h", "compaction `intervals` of levels 1, 2, ... (comma-separated durations; none: no levels)")
	fs.Var((*days)(&lf.lv.Snapshot), "snapshot-interval", "take a snapshot (level 9) this often (`DURATION`, e.g. 24h or 1d)")
	fs.Var((*days)(&lf.lv.RetentionL0), "retention-l0", "keep every commit individually restorable this long (`DURATION`)")
	fs.Var((*days)(&lf.lv.Retention), "retention", "keep history restorable at level boundaries this long (`DURATION`, e.g. 30d)")
	return lf
}

// levels returns the validated schedule.
func (lf *levelFlags) levels() (ship.Levels, error) {
	iv, err := ship.ParseIntervals(lf.intervals)
	if err != nil {
		return ship.Levels{}, usagef("-levels: %v", err)
	}
	lv := lf.lv
	lv.Intervals = iv
	if err := lv.Validate(); err != nil {
		return ship.Levels{}, usagef("%v", err)
	}
	return lv, nil
}

// days is a duration flag that also takes whole days ("30d").
type days time.Duration

func (d *days) String() string { return time.Duration(*d).String() }

func (d *days) Set(s string) error {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		v, err := strconv.Atoi(n)
		if err != nil || v <= 0 {
			return fmt.Errorf("invalid duration %q", s)
		}
		*d = days(time.Duration(v) * 24 * time.Hour)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = days(v)
	return nil
}

// leveling runs compaction and retention for a mount: one Leveler over
// the local store and, with a replica, one over the replica.
type leveling struct {
	local   *ship.Leveler
	remote  *ship.Leveler
	counted *ship.Counted // the replica's request counts
	log     *slog.Logger
	stopped chan struct{} // closed by stop
	done    chan struct{} // closed when reportRequests returns
}

// wrapReplica puts the request counter, the lease guard and the in-memory
// index in front of a replica; the uploader and the leveler share the
// index, and the lease is read and written through the counter.
func wrapReplica(r ship.ReplicaClient) (*ship.Index, *ship.Leased, *ship.Counted) {
	c := ship.NewCounted(r)
	g := ship.NewLeased(c)
	return ship.NewIndex(g), g, c
}

// startLeveling starts compaction and retention. It chains itself into
// store.OnAppend, so call it after the uploader is set up and before the
// first commit.
func startLeveling(lv ship.Levels, store *ship.Store, rep *replication, log *slog.Logger) *leveling {
	localIdx := ship.NewIndex(store.FileReplica)
	lg := &leveling{log: log, stopped: make(chan struct{}), done: make(chan struct{})}
	var keep func(string) ltx.TXID
	if rep != nil {
		lg.counted = rep.counted
		lg.remote = ship.NewLeveler(ship.LevelerConfig{Target: rep.index, Local: store, Levels: lv, Plan: restore.Plan, Log: log})
		remote, up := lg.remote, rep.up
		// Locally, a commit goes once the replica has it and has merged it.
		keep = func(db string) ltx.TXID { return min(up.Pos(db), remote.Compacted(db)) }
	}
	lg.local = ship.NewLeveler(ship.LevelerConfig{Target: localIdx, Local: store, Levels: lv, Plan: restore.Plan, Keep: keep, Log: log})
	prev := store.OnAppend
	store.OnAppend = func(db string, txid ltx.TXID) {
		if prev != nil {
			prev(db, txid)
		}
		localIdx.Observe(db, &ltx.FileInfo{Level: 0, MinTXID: txid, MaxTXID: txid, CreatedAt: time.Now().UTC()})
		lg.add(db)
	}
	lg.local.Start()
	if lg.remote != nil {
		lg.remote.Start()
	}
	go lg.reportRequests(requestReport)
	return lg
}

// requestReport is how often a mount logs its replica requests, when there
// were any since the last report: an idle mount logs nothing, as it
// requests nothing.
const requestReport = time.Minute

// reportRequests logs the replica's request counts every period in which
// they changed, until stop.
func (lg *leveling) reportRequests(period time.Duration) {
	defer close(lg.done)
	if lg.counted == nil {
		return
	}
	t := time.NewTicker(period)
	defer t.Stop()
	last := lg.counted.Total()
	for {
		select {
		case <-lg.stopped:
			return
		case <-t.C:
		}
		if n := lg.counted.Total(); n != last {
			last = n
			lg.logRequests()
		}
	}
}

// logRequests logs the replica requests so far.
func (lg *leveling) logRequests() { logRequests(lg.counted, lg.log) }

// logRequests logs the requests c counted so far (replication.stop logs
// the last count, after its final uploads and the lease's release).
func logRequests(c *ship.Counted, log *slog.Logger) {
	n := c.Counts()
	log.Info("replica requests", "total", c.Total(), "list", n["list"], "get", n["get"], "put", n["put"], "delete", n["delete"])
}

// add makes db's history part of the work.
func (lg *leveling) add(db string) {
	lg.local.Add(db)
	if lg.remote != nil {
		lg.remote.Add(db)
	}
}

// stop ends compaction and retention.
func (lg *leveling) stop() {
	if lg.remote != nil {
		lg.remote.Close()
	}
	lg.local.Close()
	close(lg.stopped)
	<-lg.done
}
