package fuse

import (
	"context"
	"log/slog"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sqlfs/sqlfs/restore"
)

// The historical tree: a read-only directory holding one file per database,
// each the database as it was at one TXID, served page by page from a
// restore.PageSource.
//
// Invariant: nothing in the tree changes while it is mounted. The kernel
// mounts it read-only ("ro"), and every operation that would write answers
// EROFS here too, so the tree stays read-only even if a request gets past
// the kernel's check. Because nothing changes, the kernel may cache names,
// attributes and file pages for as long as it likes.

// histRoot is the root directory of a historical tree.
type histRoot struct {
	fs.Inode
	files map[string]*restore.PageSource
	log   *slog.Logger
}

var (
	_ = (fs.NodeOnAdder)((*histRoot)(nil))
	_ = (fs.NodeGetattrer)((*histRoot)(nil))
	_ = (fs.NodeSetattrer)((*histRoot)(nil))
	_ = (fs.NodeCreater)((*histRoot)(nil))
	_ = (fs.NodeMkdirer)((*histRoot)(nil))
	_ = (fs.NodeMknoder)((*histRoot)(nil))
	_ = (fs.NodeLinker)((*histRoot)(nil))
	_ = (fs.NodeSymlinker)((*histRoot)(nil))
	_ = (fs.NodeUnlinker)((*histRoot)(nil))
	_ = (fs.NodeRmdirer)((*histRoot)(nil))
	_ = (fs.NodeRenamer)((*histRoot)(nil))
	_ = (fs.NodeSetxattrer)((*histRoot)(nil))
	_ = (fs.NodeRemovexattrer)((*histRoot)(nil))
)

// NewHist returns the root of a read-only tree holding, under each name,
// the database its page source shows.
func NewHist(files map[string]*restore.PageSource, log *slog.Logger) fs.InodeEmbedder {
	return &histRoot{files: files, log: log}
}

// histTimeout is how long the kernel may cache what the tree says: it
// never changes.
const histTimeout = time.Hour

// histKernelReadahead is the kernel's readahead on historical files.
const histKernelReadahead = 16 << 10

// MountHist mounts a historical tree read-only at dir.
func MountHist(dir string, root fs.InodeEmbedder, name string, debug bool) (*fuse.Server, error) {
	timeout := histTimeout
	return fs.Mount(dir, root, &fs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		MountOptions: fuse.MountOptions{
			FsName:      name,
			Name:        "sqlfs",
			DirectMount: true,
			AllowOther:  true,
			Options:     []string{"ro", "default_permissions"},
			// Little kernel readahead: a point query should fetch the pages
			// it reads, not their neighbours. Large reads (cp) still come
			// whole, and the page source reads ahead of sequential readers.
			MaxReadAhead: histKernelReadahead,
			Debug:        debug,
		},
	})
}

func (r *histRoot) OnAdd(ctx context.Context) {
	ino := uint64(2)
	for name, src := range r.files {
		ch := r.NewPersistentInode(ctx, &histFile{src: src, name: name, log: r.log}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino})
		r.AddChild(name, ch, false)
		ino++
	}
}

func (r *histRoot) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	return 0
}

func (r *histRoot) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (r *histRoot) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}

func (r *histRoot) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (r *histRoot) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (r *histRoot) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (r *histRoot) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (r *histRoot) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (r *histRoot) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (r *histRoot) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (r *histRoot) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (r *histRoot) Removexattr(ctx context.Context, attr string) syscall.Errno { return syscall.EROFS }
