// Package ship moves LTX files between sqlfs and the places that keep them:
// the local store in the data dir and replicas.
//
// A FileReplica is a directory laid out as DESIGN.md fixes it:
//
//	ROOT/<db>/<level %04x>/<min %016x>-<max %016x>.ltx
//
// The local store of a mount is a FileReplica rooted at DATA/ltx, so every
// reader of history (restore, ltx, historical mounts) reads local history and
// a file:// replica the same way.
//
// Invariant: a file under its final name is complete. Writers put the bytes in
// a temporary file in the same directory and rename it, so a reader (or a crash)
// never sees half an LTX file under a name that parses.
package ship

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/superfly/ltx"
	"golang.org/x/sys/unix"
)

// ErrNotFound is returned when a database or LTX file is not in the replica.
var ErrNotFound = errors.New("not found")

// Replica is the read side of a place that holds LTX history.
type Replica interface {
	// Databases lists the names of the databases that have history.
	Databases(ctx context.Context) ([]string, error)
	// LTXFiles lists one database's files at level, ordered by MinTXID then MaxTXID.
	// Only Level, MinTXID, MaxTXID, Size and CreatedAt are filled in.
	LTXFiles(ctx context.Context, db string, level int) ([]*ltx.FileInfo, error)
	// OpenLTX opens one LTX file for reading.
	OpenLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID) (io.ReadCloser, error)
	// ReadLTXRange opens n bytes of one LTX file starting at byte off; n < 0
	// reads to the end. Readers use it to fetch a large file in parallel
	// pieces and to resume a read that a dropped connection cut short. A
	// range past the end of the file yields fewer bytes (possibly none);
	// a missing file is ErrNotFound.
	ReadLTXRange(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, off, n int64) (io.ReadCloser, error)
}

// LevelDir is the relative directory of one level of one database.
func LevelDir(db string, level int) string {
	return filepath.Join(db, fmt.Sprintf("%04x", level))
}

// LTXPath is the relative path of one LTX file.
func LTXPath(db string, level int, minTXID, maxTXID ltx.TXID) string {
	return filepath.Join(LevelDir(db, level), ltx.FormatFilename(minTXID, maxTXID))
}

// FileReplica keeps LTX files in a local directory.
type FileReplica struct {
	Root string

	mu    sync.Mutex
	made  map[string]bool // level directories known to exist
	dirty bool            // files were written without fsync since the last Sync
	bw    *bufio.Writer   // reused between writes
}

// NewFileReplica returns a replica rooted at dir. The directory need not exist.
func NewFileReplica(dir string) *FileReplica {
	return &FileReplica{Root: dir, made: map[string]bool{}}
}

var _ Replica = (*FileReplica)(nil)

// Databases lists the database directories under the root.
func (r *FileReplica) Databases(ctx context.Context) ([]string, error) {
	ents, err := os.ReadDir(r.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(r.Root, LevelDir(e.Name(), 0))); err == nil {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// LTXFiles lists a level's LTX files. A missing database or level is an empty list.
func (r *FileReplica) LTXFiles(ctx context.Context, db string, level int) ([]*ltx.FileInfo, error) {
	return r.LTXFilesAfter(ctx, db, level, 0)
}

// LTXFilesAfter lists a level's LTX files with MinTXID > after; the others
// are skipped by name, without a stat each.
func (r *FileReplica) LTXFilesAfter(ctx context.Context, db string, level int, after ltx.TXID) ([]*ltx.FileInfo, error) {
	return r.LTXFilesBetween(ctx, db, level, after, ^ltx.TXID(0))
}

// LTXFilesBetween lists a level's LTX files with after < MinTXID <= upTo;
// the others are skipped by name, without a stat each (a historical mount
// of an early TXID wants a few of 10,000 level-0 files).
func (r *FileReplica) LTXFilesBetween(ctx context.Context, db string, level int, after, upTo ltx.TXID) ([]*ltx.FileInfo, error) {
	dir := filepath.Join(r.Root, LevelDir(db, level))
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	infos := make([]*ltx.FileInfo, 0, len(ents))
	for _, e := range ents {
		minTXID, maxTXID, ok := parseLTXName(e.Name())
		if !ok || minTXID <= after || minTXID > upTo {
			continue // temporary files and strangers, or out of range
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed while listing
		} else if err != nil {
			return nil, err
		}
		infos = append(infos, &ltx.FileInfo{
			Level: level, MinTXID: minTXID, MaxTXID: maxTXID,
			Size: fi.Size(), CreatedAt: fi.ModTime().UTC(),
		})
	}
	sort.Slice(infos, func(i, j int) bool {
		if infos[i].MinTXID != infos[j].MinTXID {
			return infos[i].MinTXID < infos[j].MinTXID
		}
		return infos[i].MaxTXID < infos[j].MaxTXID
	})
	return infos, nil
}

// parseLTXName parses the name of an LTX file, <min %016x>-<max %016x>.ltx
// with lowercase hex digits, exactly as ltx.ParseFilename accepts it, without
// its regular expression (a fifth of the time to list 10,000 files).
func parseLTXName(name string) (minTXID, maxTXID ltx.TXID, ok bool) {
	const n = 16 + 1 + 16 + len(".ltx")
	if len(name) != n || name[16] != '-' || name[33:] != ".ltx" {
		return 0, 0, false
	}
	lo, ok1 := parseHex16(name[:16])
	hi, ok2 := parseHex16(name[17:33])
	return ltx.TXID(lo), ltx.TXID(hi), ok1 && ok2
}

// parseHex16 parses 16 lowercase hex digits.
func parseHex16(s string) (uint64, bool) {
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case '0' <= c && c <= '9':
			v = v<<4 | uint64(c-'0')
		case 'a' <= c && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// OpenLTX opens one file. A missing file is ErrNotFound.
func (r *FileReplica) OpenLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID) (io.ReadCloser, error) {
	f, err := os.Open(filepath.Join(r.Root, LTXPath(db, level, minTXID, maxTXID)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", LTXPath(db, level, minTXID, maxTXID), ErrNotFound)
	}
	return f, err
}

// ReadLTXRange opens n bytes of one file from byte off (n < 0: to the end).
func (r *FileReplica) ReadLTXRange(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, off, n int64) (io.ReadCloser, error) {
	rc, err := r.OpenLTX(ctx, db, level, minTXID, maxTXID)
	if err != nil {
		return nil, err
	}
	return sectionOf(rc.(*os.File), off, n), nil
}

// sectionOf reads n bytes of f from off (n < 0: to the end) and closes f
// when closed.
func sectionOf(f *os.File, off, n int64) io.ReadCloser {
	if n < 0 {
		n = 1<<63 - 1 - off
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, off, n), f}
}

// WriteLTX stores data as one LTX file; see CreateLTX.
func (r *FileReplica) WriteLTX(db string, level int, minTXID, maxTXID ltx.TXID, data []byte, sync bool) error {
	return r.CreateLTX(db, level, minTXID, maxTXID, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}, sync)
}

// CreateLTX stores one LTX file whose bytes write produces: temp file, then
// rename. When sync is true the file and its directory are fsynced before
// CreateLTX returns; otherwise the next Sync makes it durable. If write fails
// nothing is left behind.
func (r *FileReplica) CreateLTX(db string, level int, minTXID, maxTXID ltx.TXID, write func(io.Writer) error, sync bool) (err error) {
	rel := LTXPath(db, level, minTXID, maxTXID)
	dir := filepath.Join(r.Root, filepath.Dir(rel))
	r.mu.Lock()
	made := r.made[dir]
	r.mu.Unlock()
	if !made {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := syncDir(filepath.Dir(dir)); err != nil {
			return err
		}
		r.mu.Lock()
		r.made[dir] = true
		r.mu.Unlock()
	}
	final := filepath.Join(r.Root, rel)
	// Raw system calls: os.OpenFile registers regular files with the poller
	// and os.Rename stats its target.
	tmp := final + ".tmp"
	fd, err := unix.Open(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return &os.PathError{Op: "create", Path: tmp, Err: err}
	}
	f := fdWriter(fd)
	defer func() {
		if f >= 0 {
			unix.Close(int(f))
		}
		if err != nil {
			unix.Unlink(tmp)
		}
	}()
	r.mu.Lock()
	bw := r.bw
	r.bw = nil
	r.mu.Unlock()
	if bw == nil {
		bw = bufio.NewWriterSize(f, 64<<10)
	} else {
		bw.Reset(f)
	}
	defer func() {
		bw.Reset(nil)
		r.mu.Lock()
		r.bw = bw
		r.mu.Unlock()
	}()
	if err := write(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return &os.PathError{Op: "write", Path: tmp, Err: err}
	}
	if sync {
		if err := unix.Fdatasync(fd); err != nil {
			return &os.PathError{Op: "fsync", Path: tmp, Err: err}
		}
	}
	f = -1
	if err := unix.Close(fd); err != nil {
		return &os.PathError{Op: "close", Path: tmp, Err: err}
	}
	if err := unix.Rename(tmp, final); err != nil {
		return &os.PathError{Op: "rename", Path: final, Err: err}
	}
	if sync {
		return syncDir(dir)
	}
	r.mu.Lock()
	r.dirty = true
	r.mu.Unlock()
	return nil
}

// fdWriter writes to a raw file descriptor.
type fdWriter int

func (f fdWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Write(int(f), p[n:])
		if err == unix.EINTR {
			continue
		} else if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

// Sync makes every file written so far durable, with one syncfs of the
// filesystem that holds the root (file data and directory entries alike)
// instead of an fsync per file and directory.
func (r *FileReplica) Sync() error {
	r.mu.Lock()
	dirty := r.dirty
	r.dirty = false
	r.mu.Unlock()
	if !dirty {
		return nil
	}
	if err := r.SyncAll(); err != nil {
		r.mu.Lock()
		r.dirty = true
		r.mu.Unlock()
		return err
	}
	return nil
}

// SyncAll flushes the filesystem that holds the root, whatever was written.
func (r *FileReplica) SyncAll() error {
	fd, err := unix.Open(r.Root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: r.Root, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return &os.PathError{Op: "syncfs", Path: r.Root, Err: err}
	}
	return nil
}

// RemoveTemp deletes leftovers of interrupted writes under one database.
func (r *FileReplica) RemoveTemp(db string) error {
	dir := filepath.Join(r.Root, LevelDir(db, 0))
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".tmp") {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return &os.PathError{Op: "fsync", Path: dir, Err: err}
	}
	return nil
}
