package ship

import (
	"fmt"
	"strings"
	"time"
)

// SnapshotLevel is the level of snapshots: each file there holds the whole
// database, TXIDs 1 through its MaxTXID, as Litestream v0.5 lays them out.
const SnapshotLevel = 9

// Levels says how history is compacted and how long it is kept.
//
// Level n (1 <= n <= len(Intervals)) gets one file every Intervals[n-1],
// merging the level n-1 files written since its last one; snapshots (level
// 9) are taken every Snapshot. Every commit stays individually restorable
// for RetentionL0; older history is restorable at the boundaries of the
// files still kept, back to Retention.
type Levels struct {
	Intervals   []time.Duration
	Snapshot    time.Duration
	RetentionL0 time.Duration
	Retention   time.Duration
}

// DefaultLevels is Litestream's schedule: 30 s, 5 min and 1 h compactions,
// a daily snapshot, single commits for a day, history for 30 days.
func DefaultLevels() Levels {
	return Levels{
		Intervals:   []time.Duration{30 * time.Second, 5 * time.Minute, time.Hour},
		Snapshot:    24 * time.Hour,
		RetentionL0: 24 * time.Hour,
		Retention:   30 * 24 * time.Hour,
	}
}

// ParseIntervals parses a comma-separated list of durations, one per level
// from 1 up ("30s,5m,1h"); "" and "none" mean no compaction levels.
func ParseIntervals(s string) ([]time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "none" {
		return nil, nil
	}
	var out []time.Duration
	for i, f := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("level %d interval %q: %w", i+1, f, err)
		}
		if d <= 0 {
			return nil, fmt.Errorf("level %d interval %s: must be positive", i+1, d)
		}
		if i > 0 && d < out[i-1] {
			return nil, fmt.Errorf("level %d interval %s is shorter than level %d's (%s)", i+1, d, i, out[i-1])
		}
		out = append(out, d)
	}
	if len(out) >= SnapshotLevel {
		return nil, fmt.Errorf("at most %d levels, not %d", SnapshotLevel-1, len(out))
	}
	return out, nil
}

// Validate checks the durations make sense together.
func (l Levels) Validate() error {
	if l.Snapshot <= 0 {
		return fmt.Errorf("snapshot interval %s: must be positive", l.Snapshot)
	}
	if l.RetentionL0 <= 0 || l.Retention <= 0 {
		return fmt.Errorf("retention must be positive")
	}
	if l.Retention < l.RetentionL0 {
		return fmt.Errorf("retention %s is shorter than the level-0 retention %s", l.Retention, l.RetentionL0)
	}
	return nil
}

// top is the highest compaction level below snapshots (0: none).
func (l Levels) top() int { return len(l.Intervals) }

// tick is how often the leveler looks at a database when no level is due:
// retention of level 0 needs a look now and then even without levels.
func (l Levels) tick() time.Duration {
	t := l.Snapshot
	if len(l.Intervals) > 0 {
		t = l.Intervals[0]
	}
	t = min(t, max(l.RetentionL0/10, time.Second))
	return t
}
