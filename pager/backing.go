package pager

import (
	"errors"
	"io"
	"io/fs"
	"os"
)

// backing reads the database's files as they are on disk. File descriptors
// are cached and dropped whenever the caller reports that a file was created,
// removed or replaced, so a read never sees an unlinked inode.
type backing struct {
	path  string
	files [3]*os.File
}

func (b *backing) name(kind FileKind) string {
	switch kind {
	case FileWAL:
		return b.path + "-wal"
	case FileJournal:
		return b.path + "-journal"
	}
	return b.path
}

// file returns an open descriptor, or nil when the file does not exist.
func (b *backing) file(kind FileKind) (*os.File, error) {
	if f := b.files[kind]; f != nil {
		return f, nil
	}
	f, err := os.Open(b.name(kind))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	b.files[kind] = f
	return f, nil
}

// readAt fills p from off; bytes past the end of the file (or of a missing
// file) read as zeros, as SQLite sees them.
func (b *backing) readAt(kind FileKind, p []byte, off int64) error {
	f, err := b.file(kind)
	if err != nil {
		return err
	}
	n := 0
	if f != nil {
		n, err = f.ReadAt(p, off)
		if err != nil && err != io.EOF {
			return err
		}
	}
	clear(p[n:])
	return nil
}

func (b *backing) size(kind FileKind) (int64, error) {
	f, err := b.file(kind)
	if err != nil || f == nil {
		return 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (b *backing) exists(kind FileKind) bool {
	_, err := os.Stat(b.name(kind))
	return err == nil
}

func (b *backing) forget(kind FileKind) {
	if f := b.files[kind]; f != nil {
		f.Close()
		b.files[kind] = nil
	}
}

func (b *backing) close() {
	for k := range b.files {
		b.forget(FileKind(k))
	}
}

// readerAt adapts one backing file to io.ReaderAt for the format scanners.
type readerAt struct {
	b    *backing
	kind FileKind
}

func (r readerAt) ReadAt(p []byte, off int64) (int, error) {
	f, err := r.b.file(r.kind)
	if err != nil {
		return 0, err
	} else if f == nil {
		return 0, io.EOF
	}
	return f.ReadAt(p, off)
}
