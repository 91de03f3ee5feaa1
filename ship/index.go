package ship

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/superfly/ltx"
)

// Index is a ReplicaClient that keeps each level's listing in memory, so
// the uploader, the leveler and retention never list the replica on their
// hot paths: the first LTXFiles of a (database, level) lists the replica
// once, and from then on the puts and deletes that go through the Index
// keep it current. Files written behind its back (the local store's commits)
// are reported with Observe.
//
// Invariant: the Index's writer is the only writer of the replica's
// databases (the data dir's lock and the replica lease make it so), so
// after the first listing the memory is the truth; a file a crash left
// behind is found at the next mount's listing.
type Index struct {
	ReplicaClient

	mu     sync.Mutex
	levels map[levelKey]*levelIndex
}

type levelKey struct {
	db    string
	level int
}

// levelIndex is one level's files ordered by MinTXID then MaxTXID. Until
// loaded, pending holds what Observe and puts reported.
type levelIndex struct {
	load    sync.Mutex // held while the first listing runs
	loaded  bool
	files   []*ltx.FileInfo
	pending []*ltx.FileInfo
	deleted map[[2]ltx.TXID]bool // deleted while loading
}

// NewIndex wraps r.
func NewIndex(r ReplicaClient) *Index {
	return &Index{ReplicaClient: r, levels: map[levelKey]*levelIndex{}}
}

var (
	_ ReplicaClient = (*Index)(nil)
	_ ListerAfter   = (*Index)(nil)
)

func (x *Index) level(db string, level int) *levelIndex {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := levelKey{db, level}
	li := x.levels[k]
	if li == nil {
		li = &levelIndex{deleted: map[[2]ltx.TXID]bool{}}
		x.levels[k] = li
	}
	return li
}

// LTXFiles answers from memory once the level was listed.
func (x *Index) LTXFiles(ctx context.Context, db string, level int) ([]*ltx.FileInfo, error) {
	li := x.level(db, level)
	if err := x.ensure(ctx, db, level, li); err != nil {
		return nil, err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	return slices.Clone(li.files), nil
}

// LTXFilesAfter answers from memory: files with MinTXID > after.
func (x *Index) LTXFilesAfter(ctx context.Context, db string, level int, after ltx.TXID) ([]*ltx.FileInfo, error) {
	li := x.level(db, level)
	if err := x.ensure(ctx, db, level, li); err != nil {
		return nil, err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	i, _ := slices.BinarySearchFunc(li.files, after+1, func(fi *ltx.FileInfo, t ltx.TXID) int { return cmpTXID(fi.MinTXID, t) })
	return slices.Clone(li.files[i:]), nil
}

// ensure lists the level once.
func (x *Index) ensure(ctx context.Context, db string, level int, li *levelIndex) error {
	li.load.Lock()
	defer li.load.Unlock()
	x.mu.Lock()
	loaded := li.loaded
	x.mu.Unlock()
	if loaded {
		return nil
	}
	files, err := x.ReplicaClient.LTXFiles(ctx, db, level)
	if err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	li.files = files
	for _, fi := range li.pending {
		li.insert(fi)
	}
	for k := range li.deleted {
		li.remove(k[0], k[1])
	}
	li.pending, li.deleted, li.loaded = nil, nil, true
	return nil
}

// Forget drops what the Index remembers of db: the next use of each level
// lists the replica again. The leveler calls it after a failure, in case the
// memory no longer matches the replica (a file removed behind its back).
func (x *Index) Forget(db string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for k, li := range x.levels {
		if k.db == db {
			li.loaded, li.files, li.pending, li.deleted = false, nil, nil, map[[2]ltx.TXID]bool{}
		}
	}
}

// Observe records a file written to the replica without going through the
// Index.
func (x *Index) Observe(db string, fi *ltx.FileInfo) {
	li := x.level(db, fi.Level)
	x.mu.Lock()
	defer x.mu.Unlock()
	if li.loaded {
		li.insert(fi)
	} else {
		li.pending = append(li.pending, fi)
	}
}

// PutLTX puts through and records the file; a file that already exists is
// recorded too.
func (x *Index) PutLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, data []byte, createdAt time.Time) error {
	err := x.ReplicaClient.PutLTX(ctx, db, level, minTXID, maxTXID, data, createdAt)
	if err == nil || errors.Is(err, ErrExists) {
		if createdAt.IsZero() {
			createdAt = time.Now()
		}
		x.Observe(db, &ltx.FileInfo{Level: level, MinTXID: minTXID, MaxTXID: maxTXID, Size: int64(len(data)), CreatedAt: createdAt.UTC()})
	}
	return err
}

// DeleteLTX deletes through and forgets the files. After an error, the
// files may or may not be gone: the database is listed afresh next time.
func (x *Index) DeleteLTX(ctx context.Context, db string, files []*ltx.FileInfo) error {
	if err := x.ReplicaClient.DeleteLTX(ctx, db, files); err != nil {
		x.Forget(db)
		return err
	}
	for _, fi := range files {
		li := x.level(db, fi.Level)
		x.mu.Lock()
		if li.loaded {
			li.remove(fi.MinTXID, fi.MaxTXID)
		} else {
			li.deleted[[2]ltx.TXID{fi.MinTXID, fi.MaxTXID}] = true
		}
		x.mu.Unlock()
	}
	return nil
}

// insert adds fi in order unless its range is there; called with x.mu held.
func (li *levelIndex) insert(fi *ltx.FileInfo) {
	n := len(li.files)
	if n == 0 || cmpInfo(li.files[n-1], fi) < 0 {
		li.files = append(li.files, fi) // the usual case: a newer file
		return
	}
	i, found := slices.BinarySearchFunc(li.files, fi, cmpInfo)
	if !found {
		li.files = slices.Insert(li.files, i, fi)
	}
}

func (li *levelIndex) remove(minTXID, maxTXID ltx.TXID) {
	i, found := slices.BinarySearchFunc(li.files, &ltx.FileInfo{MinTXID: minTXID, MaxTXID: maxTXID}, cmpInfo)
	if found {
		li.files = slices.Delete(li.files, i, i+1)
	}
}

func cmpInfo(a, b *ltx.FileInfo) int {
	if a.MinTXID != b.MinTXID {
		return cmpTXID(a.MinTXID, b.MinTXID)
	}
	return cmpTXID(a.MaxTXID, b.MaxTXID)
}
