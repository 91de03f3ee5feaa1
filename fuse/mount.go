package fuse

import (
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Mount mounts root at dir, mounting directly as root does not need
// fusermount. The options are the ones reference/fuse-performance.md found
// safe and fast for a filesystem that must see SQLite's writes.
func Mount(dir string, root fs.InodeEmbedder, name string, debug bool) (*fuse.Server, error) {
	sec := time.Second
	opts := &fs.Options{
		EntryTimeout:    &sec,
		AttrTimeout:     &sec,
		NegativeTimeout: &sec,
		MountOptions: fuse.MountOptions{
			FsName:      name,
			Name:        "sqlfs",
			DirectMount: true,
			AllowOther:  true,
			Options:     []string{"default_permissions"},
			// The kernel clears suid bits itself instead of asking for the
			// security.capability xattr before every write.
			ExtraCapabilities: fuse.CAP_HANDLE_KILLPRIV_V2,
			Debug:             debug,
		},
	}
	return fs.Mount(dir, root, opts)
}
