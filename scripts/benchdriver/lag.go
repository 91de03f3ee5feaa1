package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/superfly/ltx"
	"golang.org/x/sys/unix"
)

// The lag workload measures how long a commit takes to become visible in a
// replica: it commits one row at a time at -rate commits a second and
// watches, with inotify, the directory where the database's level-0 objects
// appear (-watch: a file replica's DIR/NAME/0000, or the same directory in
// the posix store of a local S3 server, which links an object into place
// only once it is complete). An object NAME min-max.ltx seen at time T makes
// TXIDs min..max visible at T; the lag of a commit is T minus the moment its
// COMMIT returned to the application (0 when the object was already there).
//
// The database's setup commits come first and the workload waits for the
// replica to go quiet before it starts; once it is quiet again after the
// run, the timed commits are its last TXIDs: the k-th of n is max-n+k.

// lagResult is what the lag workload adds to the result line.
type lagResult struct {
	P50ms, P99ms, Maxms float64
	Early               int // commits already visible when their COMMIT returned
}

// watcher reports, per TXID, when an object holding it appeared in dir.
type watcher struct {
	fd   int
	mu   sync.Mutex
	seen map[ltx.TXID]time.Time
	last time.Time // of the newest event
	max  ltx.TXID
}

func watchDir(dir string, timeout time.Duration) (*watcher, error) {
	deadline := time.Now().Add(timeout)
	for {
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s did not appear within %v", dir, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inotify %s: %w", dir, err)
	}
	w := &watcher{fd: fd, seen: map[ltx.TXID]time.Time{}, last: time.Now()}
	// What was there before the watch.
	ents, err := os.ReadDir(dir)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	for _, e := range ents {
		w.add(e.Name(), time.Time{})
	}
	go w.read()
	return w, nil
}

func (w *watcher) add(name string, at time.Time) {
	lo, hi, err := ltx.ParseFilename(filepath.Base(name))
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for txid := lo; txid <= hi; txid++ {
		if _, ok := w.seen[txid]; !ok {
			w.seen[txid] = at
		}
	}
	w.max = max(w.max, hi)
	if !at.IsZero() {
		w.last = at
	}
}

func (w *watcher) read() {
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(w.fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		} else if err != nil || n <= 0 {
			return
		}
		now := time.Now()
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			if i := slices.Index(name, 0); i >= 0 {
				name = name[:i]
			}
			w.add(string(name), now)
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

// quiet waits until no object has appeared for d and returns the newest TXID.
func (w *watcher) quiet(d, timeout time.Duration) (ltx.TXID, error) {
	deadline := time.Now().Add(timeout)
	for {
		w.mu.Lock()
		last, top := w.last, w.max
		w.mu.Unlock()
		if time.Since(last) >= d {
			return top, nil
		}
		if time.Now().After(deadline) {
			return 0, errors.New("the replica did not go quiet")
		}
		time.Sleep(d / 10)
	}
}

// runLag commits at rate for d with the watcher on watchPath, then waits up
// to 30 s for every commit to be visible and returns the lag percentiles.
func runLag(ctx context.Context, c *sql.Conn, d time.Duration, rate int, watchPath string) (int, time.Duration, *lagResult, error) {
	w, err := watchDir(watchPath, 10*time.Second)
	if err != nil {
		return 0, 0, nil, err
	}
	defer unix.Close(w.fd)
	base, err := w.quiet(300*time.Millisecond, 30*time.Second)
	if err != nil {
		return 0, 0, nil, err
	}
	stmt, err := c.PrepareContext(ctx, "INSERT INTO t (v) VALUES (?)")
	if err != nil {
		return 0, 0, nil, err
	}
	defer stmt.Close()
	blob := make([]byte, blobSize)
	var returned []time.Time
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for next := start; time.Since(start) < d; next = next.Add(interval) {
		time.Sleep(time.Until(next))
		fillRandom(blob)
		if _, err := stmt.ExecContext(ctx, blob); err != nil {
			return 0, 0, nil, err
		}
		returned = append(returned, time.Now())
	}
	took := time.Since(start)
	// The timed commits are the last len(returned) TXIDs once the replica
	// has them all and goes quiet: that holds even if a setup commit was
	// still on its way when the run started (a busy machine).
	deadline := time.Now().Add(30 * time.Second)
	for {
		top, err := w.quiet(time.Second, time.Until(deadline))
		if err != nil {
			return 0, 0, nil, err
		}
		if top >= base+ltx.TXID(len(returned)) {
			base = top - ltx.TXID(len(returned))
			break
		}
		if time.Now().After(deadline) {
			return 0, 0, nil, fmt.Errorf("%s holds txid %s 30 s after the last commit, want %s or more", watchPath, top, base+ltx.TXID(len(returned)))
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for txid := base + 1; txid <= base+ltx.TXID(len(returned)); txid++ {
		if _, ok := w.seen[txid]; !ok {
			return 0, 0, nil, fmt.Errorf("txid %s never appeared in %s", txid, watchPath)
		}
	}
	lags := make([]time.Duration, len(returned))
	res := &lagResult{}
	for k, r := range returned {
		lags[k] = max(w.seen[base+ltx.TXID(k+1)].Sub(r), 0)
		if lags[k] == 0 {
			res.Early++
		}
	}
	slices.Sort(lags)
	ms := func(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 2) }
	res.P50ms = ms(lags[len(lags)/2])
	res.P99ms = ms(lags[len(lags)*99/100])
	res.Maxms = ms(lags[len(lags)-1])
	return len(returned), took, res, nil
}
