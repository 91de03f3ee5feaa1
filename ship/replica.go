package ship

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/superfly/ltx"
	"golang.org/x/sys/unix"

	"github.com/sqlfs/sqlfs/pager/crc64iso"
)

// ReplicaClient is a place LTX files are shipped to and read back from.
//
// Invariant: an LTX file, once stored under its name, is never replaced.
// PutLTX is conditional, so of two writers racing for the same name exactly
// one succeeds and the other learns it lost (ErrExists).
type ReplicaClient interface {
	Replica
	LeaseClient
	// PutLTX stores one LTX file. It fails with ErrExists (errors.Is) if the
	// object already exists: uploads are conditional (If-None-Match: *), so
	// two writers cannot clobber each other. createdAt is the commit time,
	// stored as object metadata where the backend has it.
	PutLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, data []byte, createdAt time.Time) error
	// DeleteLTX removes files of one database (each named by its Level,
	// MinTXID and MaxTXID) in as few requests as the backend allows: S3
	// deletes up to MaxDeleteBatch objects per request. A missing file is
	// not an error. On error some of the files may be gone already.
	DeleteLTX(ctx context.Context, db string, files []*ltx.FileInfo) error
	// String names the replica for messages (the URL, without credentials).
	String() string
}

// ErrExists is returned by PutLTX when the file is already in the replica.
var ErrExists = errors.New("already exists")

var _ ReplicaClient = (*FileReplica)(nil)

// PutLTX stores one LTX file durably: the bytes go to an unnamed file in
// the level directory (O_TMPFILE; a named temporary file where the
// filesystem has none) that is fsynced and then hard-linked to the final
// name, so the file appears complete or not at all, and an existing file
// makes the link, and PutLTX, fail with ErrExists. The file's modification
// time is set to createdAt (unless zero), which LTXFiles reports as
// CreatedAt. The directory is fsynced before PutLTX returns.
func (r *FileReplica) PutLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, data []byte, createdAt time.Time) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	rel := LTXPath(db, level, minTXID, maxTXID)
	final := filepath.Join(r.Root, rel)
	dir := filepath.Dir(final)
	if err := r.mkdirDurable(dir); err != nil {
		return err
	}
	// An unnamed file takes no directory entry until the link: creating
	// and removing a named one costs more than the rest of a small put,
	// and uploads running at once contend for the directory.
	err = putUnnamed(dir, final, data, createdAt)
	if errors.Is(err, errors.ErrUnsupported) {
		err = putNamed(dir, final, data, createdAt)
	}
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%s: %w", rel, ErrExists)
	} else if err != nil {
		return err
	}
	return syncDir(dir)
}

// putUnnamed writes data to an O_TMPFILE file in dir, fsyncs it and links
// it to final. Without O_TMPFILE (or /proc) it is errors.ErrUnsupported.
func putUnnamed(dir, final string, data []byte, createdAt time.Time) error {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
		return errors.ErrUnsupported
	} else if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	if _, err := fdWriter(fd).Write(data); err != nil {
		return &os.PathError{Op: "write", Path: final, Err: err}
	}
	if !createdAt.IsZero() {
		tv := unix.NsecToTimeval(createdAt.UnixNano())
		if err := unix.Futimes(fd, []unix.Timeval{tv, tv}); err != nil {
			return &os.PathError{Op: "utimes", Path: final, Err: err}
		}
	}
	if err := unix.Fsync(fd); err != nil {
		return &os.PathError{Op: "fsync", Path: final, Err: err}
	}
	proc := fmt.Sprintf("/proc/self/fd/%d", fd)
	err = unix.Linkat(unix.AT_FDCWD, proc, unix.AT_FDCWD, final, unix.AT_SYMLINK_FOLLOW)
	if errors.Is(err, unix.ENOENT) {
		if _, serr := os.Stat(proc); serr != nil {
			return errors.ErrUnsupported // no /proc
		}
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return &os.LinkError{Op: "link", Old: proc, New: final, Err: err}
	}
	return err
}

// putNamed is putUnnamed through a named temporary file. A name of its own
// (CreateTemp), so two writers never share one; the .tmp suffix lets
// RemoveTemp clean up after a crash.
func putNamed(dir, final string, data []byte, createdAt time.Time) error {
	f, err := os.CreateTemp(dir, filepath.Base(final)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			f.Close()
		}
		unix.Unlink(tmp)
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if !createdAt.IsZero() {
		ts := []unix.Timespec{unix.NsecToTimespec(createdAt.UnixNano()), unix.NsecToTimespec(createdAt.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, tmp, ts, 0); err != nil {
			return &os.PathError{Op: "utimes", Path: tmp, Err: err}
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	err = f.Close()
	f = nil
	if err != nil {
		return err
	}
	if err := unix.Link(tmp, final); errors.Is(err, unix.EEXIST) {
		return err
	} else if err != nil {
		return &os.LinkError{Op: "link", Old: tmp, New: final, Err: err}
	}
	return nil
}

// mkdirDurable creates dir and any missing parents, fsyncing the parent of
// each directory it creates so the new entries survive a crash.
func (r *FileReplica) mkdirDurable(dir string) error {
	r.mu.Lock()
	made := r.made[dir]
	r.mu.Unlock()
	if made {
		return nil
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		parent := filepath.Dir(dir)
		if parent != dir {
			if err := r.mkdirDurable(parent); err != nil {
				return err
			}
		}
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := syncDir(parent); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	r.mu.Lock()
	r.made[dir] = true
	r.mu.Unlock()
	return nil
}

// DeleteLTX removes LTX files; a missing file is not an error. The removals
// are not fsynced: a file that comes back after a crash is only kept longer.
func (r *FileReplica) DeleteLTX(ctx context.Context, db string, files []*ltx.FileInfo) error {
	for _, fi := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := os.Remove(filepath.Join(r.Root, LTXPath(db, fi.Level, fi.MinTXID, fi.MaxTXID)))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// String is the replica's file:// URL.
func (r *FileReplica) String() string {
	return (&url.URL{Scheme: "file", Path: r.Root}).String()
}

var _ LeaseClient = (*FileReplica)(nil)

// ReadLease reads ROOT/.sqlfs-lease; its ETag is a hash of its bytes.
func (r *FileReplica) ReadLease(ctx context.Context) ([]byte, string, error) {
	data, err := os.ReadFile(filepath.Join(r.Root, LeaseName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", fmt.Errorf("%s: %w", LeaseName, ErrNotFound)
	} else if err != nil {
		return nil, "", err
	}
	return data, contentTag(data), nil
}

// WriteLease replaces ROOT/.sqlfs-lease (temp file, fsync, rename) if its
// ETag still is ifMatch ("": absent). The check and the rename happen under
// an exclusive flock of the root directory, which every sqlfs writing the
// lease of this replica takes.
func (r *FileReplica) WriteLease(ctx context.Context, data []byte, ifMatch string) (string, error) {
	if err := r.mkdirDurable(r.Root); err != nil {
		return "", err
	}
	unlock, err := r.lockLease(ifMatch)
	if err != nil {
		return "", err
	}
	defer unlock()
	path := filepath.Join(r.Root, LeaseName)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return "", err
	}
	f, err := os.Open(tmp)
	if err == nil {
		err = f.Sync()
		f.Close()
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	return contentTag(data), syncDir(r.Root)
}

// DeleteLease removes ROOT/.sqlfs-lease if its ETag still is ifMatch.
func (r *FileReplica) DeleteLease(ctx context.Context, ifMatch string) error {
	unlock, err := r.lockLease(ifMatch)
	if err != nil {
		return err
	}
	defer unlock()
	return os.Remove(filepath.Join(r.Root, LeaseName))
}

// lockLease locks the root directory and checks the lease's ETag is ifMatch
// ("": no lease). It fails with ErrExists when it is not.
func (r *FileReplica) lockLease(ifMatch string) (unlock func(), err error) {
	fd, err := unix.Open(r.Root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: r.Root, Err: err}
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "flock", Path: r.Root, Err: err}
	}
	unlock = func() { unix.Close(fd) }
	cur, err := os.ReadFile(filepath.Join(r.Root, LeaseName))
	switch {
	case errors.Is(err, fs.ErrNotExist) && ifMatch == "":
		return unlock, nil
	case err == nil && ifMatch != "" && contentTag(cur) == ifMatch:
		return unlock, nil
	case err == nil || errors.Is(err, fs.ErrNotExist):
		unlock()
		return nil, fmt.Errorf("%s: %w", LeaseName, ErrExists)
	default:
		unlock()
		return nil, err
	}
}

// contentTag is the ETag of a file replica's lease: its CRC-64.
func contentTag(data []byte) string {
	return fmt.Sprintf("%016x", crc64iso.Checksum(data))
}
