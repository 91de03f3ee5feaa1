package ship

import (
	"time"

	"github.com/superfly/ltx"
)

// Stats is a snapshot of an Uploader's work, in the shape a metrics endpoint
// wants: counters since the uploader started, and per-database gauges.
type Stats struct {
	PUTs          uint64 // LTX objects stored in the replica
	MergedPUTs    uint64 // of those, how many merged several commits
	MergedCommits uint64 // commits that went up inside merged objects
	Failures      uint64 // uploads that failed (and were retried)
	DBs           map[string]DBStats
}

// DBStats is one database's replication state.
type DBStats struct {
	ReplicaTXID ltx.TXID // every commit up to here is in the replica
	LocalTXID   ltx.TXID // newest commit in the local store
	Backlog     uint64   // commits not yet in the replica
	// Lag is the age of the oldest commit not yet in the replica (0 when
	// there is none): how far back a restore from the replica would be if
	// the machine died now.
	Lag time.Duration
	// AckLag is the time from commit to acknowledgement by the replica of
	// the newest commit acknowledged.
	AckLag    time.Duration
	LastError string // the last upload error, "" once an upload succeeds
}

// Stats returns the uploader's counters and each database's state.
func (u *Uploader) Stats() Stats {
	now := time.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.stats
	s.DBs = make(map[string]DBStats, len(u.dbs))
	for name, st := range u.dbs {
		d := DBStats{ReplicaTXID: st.pos, LocalTXID: st.local, AckLag: st.ackLag}
		if st.local > st.pos {
			d.Backlog = uint64(st.local - st.pos)
			if len(st.commits) > 0 {
				d.Lag = now.Sub(st.commits[0].at)
			}
		}
		if st.err != nil {
			d.LastError = st.err.Error()
		}
		s.DBs[name] = d
	}
	return s
}
