package fuse

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/sqlfs/sqlfs/pager"
)

// walHandle is an open WAL in watch mode: the kernel reads and writes the
// backing file directly (FUSE passthrough), and pager reads the commits back
// from it. Only fsync still comes through sqlfs, so synchronous=FULL keeps
// its promise: the fsync returns once every commit in the WAL is in history
// and durable.
type walHandle struct {
	*fs.LoopbackFile
	db *pager.DB
}

var _ = (fs.FileFsyncer)((*walHandle)(nil))

func (h *walHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return syncBoth(ctx, h.LoopbackFile, h.db, pager.FileWAL, flags)
}
