// Package fuse serves sqlfs's filesystems: the live passthrough tree over the
// data dir, whose SQLite files report every write to package pager, and the
// read-only historical tree (hist.go), whose files are served page by page
// from package restore.
//
// Invariant: every byte written to a database or its -journal in the mount
// root reaches the backing file first and pager second, before the write
// returns to the application; such files never use FUSE passthrough, which
// would hide their writes. A -wal is the same in intercept mode; in watch
// mode (WatchWAL) it is passthrough, and pager reads its commits back —
// woken by inotify, and synchronously before every database-file write,
// WAL truncation, unlink or rename and at every WAL fsync, so no WAL frame
// can be reused before its commit is in history. Everything else is a plain
// loopback.
package fuse

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sqlfs/sqlfs/pager"
)

// OpenDBFunc returns the capture of the database called name in the mount
// root, starting it if needed.
type OpenDBFunc func(name string) (*pager.DB, error)

// Live is the live filesystem: a loopback over a backing directory whose
// root-level SQLite files are captured.
type Live struct {
	dir    string
	openDB OpenDBFunc
	watch  bool // WALs in watch mode (see WatchWAL)

	watchDelay time.Duration // test fault injection: how late the watcher reacts

	mu  sync.Mutex
	dbs map[string]*pager.DB
}

// NewLive returns the live tree over dir. openDB is called once per database
// name, the first time one of its files is opened, created or removed.
func NewLive(dir string, openDB OpenDBFunc) *Live {
	return &Live{dir: dir, openDB: openDB, dbs: map[string]*pager.DB{}}
}

// Add registers a capture started before mounting.
func (l *Live) Add(db *pager.DB) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dbs[db.Name()] = db
}

// DBs returns every capture started so far.
func (l *Live) DBs() []*pager.DB {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*pager.DB, 0, len(l.dbs))
	for _, db := range l.dbs {
		out = append(out, db)
	}
	return out
}

func (l *Live) db(name string) (*pager.DB, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if db := l.dbs[name]; db != nil {
		return db, nil
	}
	db, err := l.openDB(name)
	if err != nil {
		return nil, err
	}
	l.dbs[name] = db
	return db, nil
}

// classify maps a root-level file name to the database it belongs to and
// which of its files it is. -shm files and dot files are not captured.
func classify(name string) (dbName string, kind pager.FileKind, ok bool) {
	switch {
	case name == "" || strings.HasPrefix(name, "."):
		return "", 0, false
	case strings.HasSuffix(name, "-shm"):
		return "", 0, false
	case strings.HasSuffix(name, "-wal"):
		return strings.TrimSuffix(name, "-wal"), pager.FileWAL, len(name) > 4
	case strings.HasSuffix(name, "-journal"):
		return strings.TrimSuffix(name, "-journal"), pager.FileJournal, len(name) > 8
	}
	return name, pager.FileDB, true
}

// Root returns the root node to mount.
func (l *Live) Root() (fs.InodeEmbedder, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(l.dir, &st); err != nil {
		return nil, err
	}
	lr := &fs.LoopbackRoot{Path: l.dir, Dev: uint64(st.Dev)}
	lr.NewNode = func(rootData *fs.LoopbackRoot, parent *fs.Inode, name string, st *syscall.Stat_t) fs.InodeEmbedder {
		return &node{LoopbackNode: fs.LoopbackNode{RootData: rootData}, live: l}
	}
	root := lr.NewNode(lr, nil, "", &st)
	lr.RootNode = root
	return root, nil
}

// node is a loopback node that tells pager about changes to captured files.
type node struct {
	fs.LoopbackNode
	live *Live
}

var (
	_ = (fs.NodeOpener)((*node)(nil))
	_ = (fs.NodeCreater)((*node)(nil))
	_ = (fs.NodeUnlinker)((*node)(nil))
	_ = (fs.NodeRenamer)((*node)(nil))
	_ = (fs.NodeSetattrer)((*node)(nil))
	_ = (fs.NodeCopyFileRanger)((*node)(nil))
)

func (n *node) isRoot() bool { return n.EmbeddedInode().IsRoot() }

// captured returns the capture and file kind of this node when it is a
// captured file in the mount root.
func (n *node) captured() (*pager.DB, pager.FileKind, syscall.Errno) {
	rel := n.Path(nil)
	if strings.Contains(rel, "/") {
		return nil, 0, 0
	}
	return n.live.capture(rel)
}

func (l *Live) capture(name string) (*pager.DB, pager.FileKind, syscall.Errno) {
	dbName, kind, ok := classify(name)
	if !ok {
		return nil, 0, 0
	}
	db, err := l.db(dbName)
	if err != nil {
		return nil, 0, syscall.EIO
	}
	return db, kind, 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	db, kind, errno := n.captured()
	if errno != 0 {
		return nil, 0, errno
	}
	if db == nil {
		return n.LoopbackNode.Open(ctx, flags)
	}
	flags &^= syscall.O_APPEND | fuse.FMODE_EXEC
	fd, err := syscall.Open(filepath.Join(n.RootData.Path, n.Path(nil)), int(flags)|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fs.ToErrno(err)
	}
	if flags&syscall.O_TRUNC != 0 {
		if err := db.Created(kind); err != nil {
			syscall.Close(fd)
			return nil, 0, syscall.EIO
		}
	}
	fh, fuseFlags := wrapHandle(fs.NewLoopbackFileFromOS(os.NewFile(uintptr(fd), "")), db, kind, n.live.watch)
	return fh, fuseFlags, 0
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	var db *pager.DB
	var kind pager.FileKind
	if n.isRoot() {
		var errno syscall.Errno
		if db, kind, errno = n.live.capture(name); errno != 0 {
			return nil, nil, 0, errno
		}
	}
	inode, fh, fuseFlags, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 || db == nil {
		return inode, fh, fuseFlags, errno
	}
	lf := fh.(*fs.LoopbackFile)
	if err := db.Created(kind); err != nil {
		lf.Release(ctx)
		return nil, nil, 0, syscall.EIO
	}
	fh, fuseFlags = wrapHandle(lf, db, kind, n.live.watch)
	return inode, fh, fuseFlags, 0
}

// Unlink removes the backing file first: for a DELETE-mode journal the
// unlink is the commit point, and the commit is recorded once it happened.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if !n.isRoot() {
		return n.LoopbackNode.Unlink(ctx, name)
	}
	db, kind, errno := n.live.capture(name)
	if errno != 0 {
		return errno
	}
	if errno := n.live.catchUp(db, kind); errno != 0 {
		return errno
	}
	if errno := n.LoopbackNode.Unlink(ctx, name); errno != 0 || db == nil {
		return errno
	}
	if err := db.Removed(kind); err != nil {
		return syscall.EIO
	}
	return 0
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if n.isRoot() {
		if db, kind, errno := n.live.capture(name); errno != 0 {
			return errno
		} else if errno := n.live.catchUp(db, kind); errno != 0 {
			return errno
		}
	}
	if np, ok := newParent.(*node); ok && np.isRoot() {
		if db, kind, errno := n.live.capture(newName); errno != 0 {
			return errno
		} else if errno := n.live.catchUp(db, kind); errno != 0 {
			return errno
		}
	}
	if errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags); errno != 0 {
		return errno
	}
	if n.isRoot() {
		if db, kind, errno := n.live.capture(name); errno != 0 {
			return errno
		} else if db != nil && db.Removed(kind) != nil {
			return syscall.EIO
		}
	}
	if np, ok := newParent.(*node); ok && np.isRoot() {
		db, kind, errno := n.live.capture(newName)
		if errno != 0 || db == nil {
			return errno
		}
		var err error
		if kind == pager.FileDB {
			err = db.Replaced()
		} else {
			err = db.Created(kind)
		}
		if err != nil {
			return syscall.EIO
		}
	}
	return 0
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	switch h := f.(type) {
	case *handle:
		f = h.LoopbackFile
	case *walHandle:
		f = h.LoopbackFile
	}
	size, ok := in.GetSize()
	if !ok {
		return n.LoopbackNode.Setattr(ctx, f, in, out)
	}
	db, kind, errno := n.captured()
	if errno != 0 {
		return errno
	}
	if errno := n.live.catchUp(db, kind); errno != 0 {
		return errno
	}
	if errno := n.LoopbackNode.Setattr(ctx, f, in, out); errno != 0 || db == nil {
		return errno
	}
	if err := db.Truncate(kind, int64(size)); err != nil {
		return syscall.EIO
	}
	return 0
}

// catchUp brings history up to the WAL before an operation on a database's
// file of kind that could let SQLite reuse WAL frames (watch mode only).
func (l *Live) catchUp(db *pager.DB, kind pager.FileKind) syscall.Errno {
	if !l.watch || db == nil || (kind != pager.FileWAL && kind != pager.FileDB) {
		return 0
	}
	if err := db.CatchUp(); err != nil {
		return syscall.EIO
	}
	return 0
}

// CopyFileRange is refused so the kernel falls back to reads and writes,
// which captured files must see.
func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, len uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.ENOTSUP
}
