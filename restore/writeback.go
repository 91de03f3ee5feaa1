package restore

import (
	"io"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// output is the file a restore builds the database in.
type output interface {
	io.WriterAt
	Truncate(size int64) error
}

// writeback is the temporary file a restore writes, which asks the kernel to
// start writing its dirty pages to disk every writebackEvery bytes, so the
// disk works while the restore decodes the rest and the final fsync finds
// little left to do. Without it the whole database sits dirty in the page
// cache until that fsync, which then writes it all while the restore waits.
//
// It changes when data reaches the disk, not whether: durability still comes
// only from the fsync Restore calls before the rename, and a failed
// writeback is reported by that fsync (the kernel records it on the file), so
// the error of the request that starts writeback is not needed.
type writeback struct {
	*os.File
	unsynced atomic.Int64  // bytes written since writeback was last started
	kick     chan struct{} // wakes the goroutine that starts writeback
	done     sync.WaitGroup
}

// writebackEvery is how many bytes are written between two requests to
// start writeback.
const writebackEvery = 8 << 20

func newWriteback(f *os.File) *writeback {
	w := &writeback{File: f, kick: make(chan struct{}, 1)}
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		raw, err := f.SyscallConn()
		if err != nil {
			for range w.kick { // not a file descriptor: nothing to start
			}
			return
		}
		for range w.kick {
			// Offset 0, length 0: every dirty page of the file. Pages already
			// being written are skipped, so this does not wait for the disk.
			_ = raw.Control(func(fd uintptr) {
				_ = unix.SyncFileRange(int(fd), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
			})
		}
	}()
	return w
}

// WriteAt writes p at off, and starts writeback once writebackEvery bytes
// have been written since it last did. Safe for concurrent use.
func (w *writeback) WriteAt(p []byte, off int64) (int, error) {
	n, err := w.File.WriteAt(p, off)
	if w.unsynced.Add(int64(n)) >= writebackEvery {
		w.unsynced.Store(0)
		select {
		case w.kick <- struct{}{}:
		default: // a request is pending; it covers these pages too
		}
	}
	return n, err
}

// stop ends the goroutine. It must be called once, after the last WriteAt;
// the file stays open.
func (w *writeback) stop() {
	close(w.kick)
	w.done.Wait()
}
