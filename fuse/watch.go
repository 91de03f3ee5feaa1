package fuse

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sqlfs/sqlfs/pager"
)

// WatchWAL switches the live tree to watch mode for WALs: they are opened in
// FUSE passthrough, so the kernel writes them without a round trip through
// sqlfs, and an inotify watch on the backing directory wakes each database's
// capture when its WAL changes. Call it before mounting; stop ends the watch.
func (l *Live) WatchWAL(log *slog.Logger) (stop func(), err error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, os.NewSyscallError("inotify_init1", err)
	}
	if _, err := unix.InotifyAddWatch(fd, l.dir, unix.IN_MODIFY); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "inotify_add_watch", Path: l.dir, Err: err}
	}
	// A non-blocking descriptor in an os.File uses the runtime poller, so
	// Close wakes the reader.
	f := os.NewFile(uintptr(fd), "inotify")
	l.watch = true
	// Fault injection for tests: a watcher this slow leaves every commit
	// to the synchronous catch-ups (checkpoints, fsyncs, truncations).
	if d, err := time.ParseDuration(os.Getenv("SQLFS_TEST_WATCH_DELAY")); err == nil {
		l.watchDelay = d
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.watchLoop(f, log)
	}()
	return func() {
		f.Close()
		<-done
	}, nil
}

// watchLoop turns WAL change events into capture passes. Events that arrive
// together are handled once per database; a database whose capture asked to
// be called again later (Tail's retry) is woken by a read deadline.
func (l *Live) watchLoop(f *os.File, log *slog.Logger) {
	buf := make([]byte, 64<<10)
	later := map[*pager.DB]time.Time{}
	woken := map[*pager.DB]bool{}
	for {
		var deadline time.Time
		for _, t := range later {
			if deadline.IsZero() || t.Before(deadline) {
				deadline = t
			}
		}
		f.SetReadDeadline(deadline)
		n, err := f.Read(buf)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
		case err != nil:
			return // closed
		}
		if l.watchDelay > 0 {
			time.Sleep(l.watchDelay)
		}
		clear(woken)
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				for _, db := range l.DBs() {
					woken[db] = true // events were lost: look at every WAL
				}
				continue
			}
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if db := l.walDB(string(name)); db != nil {
				woken[db] = true
			}
		}
		now := time.Now()
		for db, t := range later {
			if !t.After(now) {
				woken[db] = true
				delete(later, db)
			}
		}
		for db := range woken {
			retry, err := db.Tail()
			if err != nil {
				log.Error("WAL capture failed", "db", db.Name(), "err", err)
				continue
			}
			if retry > 0 {
				later[db] = now.Add(retry)
			} else {
				delete(later, db)
			}
		}
	}
}

// walDB returns the running capture whose WAL is called name, if any.
func (l *Live) walDB(name string) *pager.DB {
	db, kind, ok := classify(name)
	if !ok || kind != pager.FileWAL {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dbs[db]
}
