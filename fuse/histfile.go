package fuse

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sqlfs/sqlfs/restore"
)

// histFile is one database of a historical tree: a read-only file whose
// bytes are the database at the page source's TXID.
type histFile struct {
	fs.Inode
	src  *restore.PageSource
	name string
	log  *slog.Logger

	dropCache sync.Once // the kernel's cached pages, once history proved corrupt
}

var (
	_ = (fs.NodeGetattrer)((*histFile)(nil))
	_ = (fs.NodeOpener)((*histFile)(nil))
	_ = (fs.NodeSetattrer)((*histFile)(nil))
	_ = (fs.NodeSetxattrer)((*histFile)(nil))
	_ = (fs.NodeRemovexattrer)((*histFile)(nil))
	_ = (fs.NodeAllocater)((*histFile)(nil))
	_ = (fs.NodeCopyFileRanger)((*histFile)(nil))
)

func (n *histFile) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	size := n.src.Size()
	out.Mode = syscall.S_IFREG | 0o444
	out.Nlink = 1
	out.Size = uint64(size)
	out.Blocks = (uint64(size) + 511) / 512
	out.Blksize = n.src.PageSize()
	t := n.src.Time()
	out.SetTimes(&t, &t, &t)
	return 0
}

// Open refuses anything but reading. The kernel keeps the file's pages
// cached across opens: they never change.
func (n *histFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	return &histHandle{rd: n.src.NewReader(), file: n}, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *histFile) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (n *histFile) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (n *histFile) Removexattr(ctx context.Context, attr string) syscall.Errno { return syscall.EROFS }

func (n *histFile) Allocate(ctx context.Context, f fs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	return syscall.EROFS
}

func (n *histFile) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, len uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}

// histHandle is an open historical file, with its own readahead.
type histHandle struct {
	rd   *restore.Reader
	file *histFile
}

var (
	_ = (fs.FileReader)((*histHandle)(nil))
	_ = (fs.FileWriter)((*histHandle)(nil))
)

// Read serves pages from the page source. A failure to fetch or decode a
// page is EIO to the reader, and logged with the reason. Once history
// proves corrupt (a file or the database failed verification), the pages
// the kernel cached are dropped, so that later reads reach the page source
// and fail too instead of being answered from the cache.
func (h *histHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := h.rd.ReadAt(ctx, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		if ctx.Err() == nil {
			h.file.log.Error("read of a historical database failed", "db", h.file.name, "off", off, "len", len(dest), "err", err)
		}
		if errors.Is(err, restore.ErrCorrupt) || errors.Is(err, restore.ErrChecksumMismatch) {
			// Not from inside this request: the kernel may hold a page
			// lock the invalidation would wait for.
			h.file.dropCache.Do(func() { go h.file.NotifyContent(0, 0) })
		}
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *histHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}
