package fuse

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

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

// histKernelReadahead is the kernel's readahead on historical files as
// mounted; histStreamReadahead is what it is then raised to (see MountHist).
const (
	histKernelReadahead = 16 << 10
	histStreamReadahead = 4 << 20
)

// histMaxRead is the largest READ the kernel sends. go-fuse derives the
// kernel's request size limit (max_pages) from MaxWrite, so this is
// MaxWrite; the tree never takes a write.
const histMaxRead = 1 << 20

// MountHist mounts a historical tree read-only at dir.
//
// The kernel's readahead window on it is then raised to 4 MiB through
// sysfs (the FUSE handshake caps it at 128 KiB): a sequential reader such
// as cp then gets reads of 1 MiB (histMaxRead), several in flight, instead
// of one 128 KiB read at a time, each a round trip (cp out of a 1 GiB
// database: 1,000 reads instead of 8,200). A read that does not follow
// the one before is not read ahead by the kernel whatever the window; a
// point query reads page 1 then page 2, which starts a 64 KiB readahead,
// then one page per B-tree level: 83.3 KiB fetched for 4 levels from the
// bench's data dir, against 19.6 KiB with 16 KiB. Setting the window needs
// root; without it the mount works as before, with reads of 128 KiB.
func MountHist(dir string, root fs.InodeEmbedder, name string, debug bool) (*fuse.Server, error) {
	timeout := histTimeout
	server, err := fs.Mount(dir, root, &fs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		MountOptions: fuse.MountOptions{
			FsName:       name,
			Name:         "sqlfs",
			DirectMount:  true,
			AllowOther:   true,
			Options:      []string{"ro", "default_permissions"},
			MaxReadAhead: histKernelReadahead,
			MaxWrite:     histMaxRead,
			Debug:        debug,
		},
	})
	if err != nil {
		return nil, err
	}
	if err := setReadahead(dir, histStreamReadahead); err != nil {
		if r, ok := root.(*histRoot); ok && r.log != nil {
			r.log.Debug("kernel readahead left as it is", "mountpoint", dir, "err", err)
		}
	}
	return server, nil
}

// setReadahead sets the kernel's readahead window on the mount at dir.
func setReadahead(dir string, n int) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(n>>10)), 0)
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
