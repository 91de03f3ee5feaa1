// Package restore reads database history out of a replica: it lists LTX
// files, plans which ones rebuild a database at a TXID, and materialises that
// database as a file.
//
// Invariant: Restore never leaves a partial file under the output name. The
// database is built in a temporary file beside the output, verified against
// the LTX checksums, fsynced, and only then renamed into place — and the
// rename refuses to replace anything that appeared at the output meanwhile.
package restore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
	"golang.org/x/sys/unix"
)

// Errors callers branch on. Each error returned by this package that belongs
// to one of these kinds matches it with errors.Is; its message names the
// database, TXID or file concerned.
var (
	// ErrNoHistory means the replica has no LTX files for the database.
	ErrNoHistory = errors.New("no history")
	// ErrTXIDNotFound means the requested TXID is not a state the history
	// can rebuild: it lies past the end, or inside a file merging several
	// transactions.
	ErrTXIDNotFound = errors.New("txid not found")
	// ErrGap means a range of TXIDs between 1 and the target has no file.
	ErrGap = errors.New("gap in history")
	// ErrChecksumMismatch means the files do not chain (a pre-apply checksum
	// differs from the previous post-apply checksum) or the rebuilt database
	// does not have the checksum its last file promises.
	ErrChecksumMismatch = errors.New("checksum mismatch")
	// ErrCorrupt means an LTX file could not be decoded or failed its own
	// file checksum.
	ErrCorrupt = errors.New("corrupt LTX file")
	// ErrBeforeHistory means a restore by time asked for a time before the
	// first commit.
	ErrBeforeHistory = errors.New("before the first commit")
	// ErrCheckFailed means the restored database failed Options.Check.
	ErrCheckFailed = errors.New("restored database failed its check")
	// ErrOutputExists means the output path (or a journal or WAL beside it
	// that SQLite would apply to the restored file) already exists.
	ErrOutputExists = errors.New("output exists")
)

// kindError is an error with a complete message that matches a sentinel
// kind (and, optionally, an underlying cause) with errors.Is.
type kindError struct {
	kind  error
	cause error
	msg   string
}

func (e *kindError) Error() string { return e.msg }

func (e *kindError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.cause}
}

func errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// Options says where and to which TXID Restore rebuilds a database.
type Options struct {
	// Output is the path of the database file to create. It must not exist;
	// its directory must.
	Output string
	// TXID is the transaction to restore to; 0 means the latest.
	TXID ltx.TXID
	// Time, if set (and TXID is 0), restores the newest commit at or before
	// it, by the commit time in the LTX headers (see TXIDAt).
	Time time.Time
	// Parallelism is how many reads are in flight at once; 0 means
	// DefaultParallelism.
	Parallelism int
	// Progress, if set, is updated as files are downloaded and applied.
	Progress *Progress
	// Check, if set, is run on the finished, fsynced file (under a
	// temporary name) before it is renamed into place; an error leaves no
	// output and is returned matching ErrCheckFailed.
	Check func(ctx context.Context, path string) error
}

// Result describes a restored database. Only valid when Restore returns nil.
type Result struct {
	TXID     ltx.TXID     // the transaction the file holds
	PageSize uint32       // bytes per page
	Commit   uint32       // size in pages (0: the database was deleted at TXID)
	Checksum ltx.Checksum // database checksum, equal to the last file's post-apply checksum
	Bytes    int64        // file size: Commit * PageSize
}

// Restore rebuilds database db from r as it was at opt.TXID and writes it to
// opt.Output. It refuses (ErrOutputExists) when the output exists, before
// reading any history and again, atomically, when it renames the finished
// file into place. It verifies every LTX file it reads, the checksum chain
// between them, and the checksum of the result. On any error nothing is left
// at or beside opt.Output, with one exception: if only the final fsync of
// the directory fails, the complete file stays in place and the error says so.
//
// If the database had been deleted at opt.TXID (its last file has Commit 0),
// the output is an empty file, which SQLite opens as an empty database.
func Restore(ctx context.Context, r ship.Replica, db string, opt Options) (res *Result, err error) {
	if opt.Output == "" {
		return nil, errors.New("restore: no output path")
	}
	if err := checkOutput(opt.Output); err != nil {
		return nil, err
	}
	target := opt.TXID
	if target == 0 && !opt.Time.IsZero() {
		if target, err = TXIDAt(ctx, r, db, opt.Time); err != nil {
			return nil, err
		}
	}
	plan, err := Plan(ctx, r, db, target)
	if err != nil {
		return nil, err
	}

	f, tmp, err := createTemp(opt.Output)
	if err != nil {
		return nil, err
	}
	closed := false
	defer func() {
		if err != nil {
			if !closed {
				f.Close()
			}
			os.Remove(tmp)
		}
	}()

	out := newWriteback(f)
	defer out.stop()
	res, err = apply(ctx, r, db, plan, out, opt)
	for retry := 0; retry < 3 && errors.Is(err, ship.ErrNotFound); retry++ {
		// Retention removed a planned file meanwhile (it had merged it
		// into one the new plan finds): start over, at the same target
		// (for -timestamp, the TXID the time resolved to).
		if plan, err = Plan(ctx, r, db, target); err != nil {
			return nil, err
		}
		if err = f.Truncate(0); err != nil {
			return nil, fmt.Errorf("restore %s: %w", db, err)
		}
		res, err = apply(ctx, r, db, plan, out, opt)
	}
	if err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("restore %s: %w", db, err)
	}
	closed = true
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("restore %s: %w", db, err)
	}
	if opt.Check != nil {
		if err := opt.Check(ctx, tmp); err != nil {
			return nil, &kindError{kind: ErrCheckFailed, cause: err,
				msg: fmt.Sprintf("restored %s at txid %s fails its check: %v", db, res.TXID, err)}
		}
	}
	if err := renameNoReplace(tmp, opt.Output); err != nil {
		return nil, err
	}
	if err := syncDir(filepath.Dir(opt.Output)); err != nil {
		// The file is in place and complete; only its directory entry may
		// not be durable yet. Report it, but leave the database there.
		return res, fmt.Errorf("restored %s to %s, but its directory entry may not be durable: %w", db, opt.Output, err)
	}
	return res, nil
}

// checkOutput refuses an output that exists, a missing output directory, and
// a hot journal or WAL beside the output that SQLite would apply to the
// restored database the first time it opens it.
func checkOutput(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return errorf(ErrOutputExists, "%s already exists; restore never overwrites a file", path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return errorf(fs.ErrNotExist, "output directory %s does not exist", dir)
	} else if err != nil {
		return err
	} else if !st.IsDir() {
		return fmt.Errorf("output directory %s is not a directory", dir)
	}
	for _, suffix := range []string{"-wal", "-journal"} {
		if _, err := os.Lstat(path + suffix); err == nil {
			return errorf(ErrOutputExists, "%s exists and SQLite would apply it to the restored database; move it away first", path+suffix)
		}
	}
	return nil
}

// createTemp creates OUTPUT.tmp-XXXXXXXX beside the output, so the final
// rename stays within one directory and one filesystem.
func createTemp(output string) (*os.File, string, error) {
	for range 100 {
		name := fmt.Sprintf("%s.tmp-%08x", output, rand.Uint32())
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return f, name, err
	}
	return nil, "", fmt.Errorf("create temporary file beside %s: too many attempts", output)
}

// renameNoReplace moves tmp to path unless path exists. Filesystems without
// RENAME_NOREPLACE get the same guarantee from link(2), which never replaces.
func renameNoReplace(tmp, path string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST):
		return errorf(ErrOutputExists, "%s appeared during the restore; restore never overwrites a file", path)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EOPNOTSUPP):
		if err := os.Link(tmp, path); errors.Is(err, fs.ErrExist) {
			return errorf(ErrOutputExists, "%s appeared during the restore; restore never overwrites a file", path)
		} else if err != nil {
			return err
		}
		return os.Remove(tmp)
	default:
		return &os.PathError{Op: "rename", Path: path, Err: err}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
