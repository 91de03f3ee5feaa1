package fuse

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sqlfs/sqlfs/pager"
)

// handle is an open captured file: a loopback file whose writes, syncs and
// closes are reported to pager after they reached the backing file.
type handle struct {
	*fs.LoopbackFile
	db    *pager.DB
	kind  pager.FileKind
	watch bool // the WAL is in watch mode: catch up before checkpoint writes
}

var (
	_ = (fs.FileWriter)((*handle)(nil))
	_ = (fs.FileFsyncer)((*handle)(nil))
	_ = (fs.FileFlusher)((*handle)(nil))
	_ = (fs.FilePassthroughFder)((*handle)(nil))
)

// wrapHandle returns the handle for an open captured file of kind: an
// intercepting handle, or in watch mode for a WAL a passthrough one.
func wrapHandle(lf *fs.LoopbackFile, db *pager.DB, kind pager.FileKind, watch bool) (fs.FileHandle, uint32) {
	if watch && kind == pager.FileWAL {
		return &walHandle{LoopbackFile: lf, db: db}, 0
	}
	return &handle{LoopbackFile: lf, db: db, kind: kind, watch: watch}, openFlags(kind)
}

// openFlags asks the kernel to send the journals' writes as SQLite made
// them (no splitting at page-cache boundaries, no caching); the database
// file keeps the page cache so reads stay fast.
func openFlags(kind pager.FileKind) uint32 {
	if kind == pager.FileDB {
		return 0
	}
	return fuse.FOPEN_DIRECT_IO
}

// PassthroughFd refuses passthrough: the kernel would write the backing file
// without telling us.
func (h *handle) PassthroughFd() (int, bool) { return -1, false }

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if h.watch && h.kind == pager.FileDB {
		// A checkpoint is about to copy WAL frames into the database file,
		// after which SQLite may restart the WAL over them: every commit in
		// the WAL must be in history first.
		if err := h.db.CatchUp(); err != nil {
			return 0, syscall.EIO
		}
	}
	n, errno := h.LoopbackFile.Write(ctx, data, off)
	if errno != 0 {
		return n, errno
	}
	if err := h.db.Write(h.kind, data[:n], off); err != nil {
		return 0, syscall.EIO
	}
	return n, 0
}

// Fsync makes the backing file and the history up to now durable. The two
// flushes run at once so the filesystem can commit them together.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return syncBoth(ctx, h.LoopbackFile, h.db, h.kind, flags)
}

func syncBoth(ctx context.Context, lf *fs.LoopbackFile, db *pager.DB, kind pager.FileKind, flags uint32) syscall.Errno {
	done := make(chan error, 1)
	go func() { done <- db.Sync(kind) }()
	errno := lf.Fsync(ctx, flags)
	if err := <-done; err != nil && errno == 0 {
		errno = syscall.EIO
	}
	return errno
}

// Flush comes with every close(2): a database written by something other
// than SQLite is captured then, before close returns.
func (h *handle) Flush(ctx context.Context) syscall.Errno {
	if errno := h.LoopbackFile.Flush(ctx); errno != 0 {
		return errno
	}
	if h.kind == pager.FileDB {
		if err := h.db.Closed(); err != nil {
			return syscall.EIO
		}
	}
	return 0
}
