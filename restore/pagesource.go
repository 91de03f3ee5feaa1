package restore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sqlfs/sqlfs/pager/crc64iso"
	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// PageSource serves one database as it was at one TXID, page by page,
// straight from a replica: at open it reads only the page index, header and
// trailer of each LTX file the state needs (ranged reads of their tails),
// and each page is then one ranged read of its frame in the newest file that
// holds it. Memory and open time grow with the page indexes, not with the
// size of the database.
//
// Invariant: locs[p-1] is where page p of the database at the target lies —
// a frame of the newest planned file that holds p and that no later
// truncation below p discarded — or nowhere, and then the page is zeros.
// It is built once at open and never changes, and LTX files never change,
// so a page once decoded is valid for the life of the source.
//
// What is verified, and when, is set out at the top of verify.go: in short,
// a point query checks the frames it reads, each file's checksum is checked
// once all its frames have been read, and the read that returns the last
// page of the database not returned before waits until every file and the
// database checksum are verified, so a copy out that completes is verified.
type PageSource struct {
	r    ship.Replica
	db   string
	opt  PageSourceOptions
	log  *slog.Logger
	txid ltx.TXID
	time time.Time

	pageSize uint32
	commit   uint32 // database size in pages
	lockPgno uint32
	files    []*fileIndex // the files read, newest first
	locs     []pageLoc
	zero     cachedPage

	pageShift  *crc64iso.Shift // combines a CRC with that of one page
	frameShift *crc64iso.Shift // ... with that of one block frame's hashed bytes
	done       completion

	disk     *diskCache
	mu       sync.Mutex
	lru      *pageLRU  // under mu
	inflight []*flight // by pgno-1: the fetch under way of the page, under mu

	fetchSem chan struct{} // bounds ranged reads in flight
	raSem    chan struct{} // bounds readahead batches in flight
	bg       context.Context
	stop     context.CancelFunc
	wg       sync.WaitGroup

	indexBytes, pageBytes, requests atomic.Int64
	slabs                           slabCounts
}

// PageSourceOptions tune a PageSource. The zero value is valid.
type PageSourceOptions struct {
	// Rollback presents a WAL-mode database (header bytes 18 and 19 both 2)
	// as a rollback-journal one (both 1), so that SQLite can open it
	// read-only without a -wal or -shm file. Only those two bytes of page 1
	// differ from the database.
	Rollback bool
	// CacheDir, when set, keeps the byte ranges fetched on local disk under
	// it, keyed by ReplicaID, file name, size and file checksum.
	CacheDir  string
	ReplicaID string
	// CacheBytes bounds the disk cache: past it, the files least recently
	// used leave it whole. 0 means DefaultCacheBytes.
	CacheBytes int64
	// MemoryBytes bounds the decoded pages kept in memory; 0 means 64 MiB.
	MemoryBytes int64
	// Log receives a debug line per ranged read; nil discards.
	Log *slog.Logger
}

// PageSourceStats counts what a page source read from its replica.
type PageSourceStats struct {
	IndexBytes int64 // read at open: headers, page indexes, trailers
	PageBytes  int64 // page frames read since (disk cache misses only)
	Requests   int64 // ranged reads of page frames
}

type pageLoc struct {
	file uint32 // index in files + 1; 0: no file holds the page (zeros)
	size uint32
	off  int64
}

type flight struct{ done chan struct{} }

const (
	indexParallel  = 64        // page indexes read at once at open (S3 requests are latency-bound)
	fetchParallel  = 16        // ranged reads of frames at once
	maxSpan        = 2 << 20   // most bytes of adjacent frames one ranged read takes
	maxGap         = 64 << 10  // frames up to this far apart are read in one range, the bytes between skipped
	readaheadBytes = 16 << 20  // how far ahead of a sequential reader pages are fetched
	raSlack        = 64        // pages a read may start away from the last one's end and still count as sequential
	raStreak       = 256 << 10 // bytes read in sequence before readahead starts
	raDisorder     = 32 << 20  // how far out of order the reads of a sequential reader may arrive
	dropLag        = 16 << 20  // how far behind a streaming reader the pages it read leave memory
)

// lruFloor is the least memory the decoded pages get whatever
// MemoryBytes says: what readahead fetches must stay until it is read.
var lruFloor int64 = 2 * readaheadBytes

// OpenPageSource reads the page indexes of the files that rebuild db at
// target (0: the latest) and returns a source of its pages. Errors are those
// of Plan, plus ErrCorrupt and ErrChecksumMismatch naming the file.
func OpenPageSource(ctx context.Context, r ship.Replica, db string, target ltx.TXID, opt PageSourceOptions) (*PageSource, error) {
	t0 := time.Now()
	plan, err := Plan(ctx, r, db, target)
	if err != nil {
		return nil, err
	}
	planned := time.Since(t0)
	s := &PageSource{r: r, db: db, opt: opt, log: opt.Log,
		fetchSem: make(chan struct{}, fetchParallel), raSem: make(chan struct{}, 2)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if err := s.readIndexes(ctx, plan); err != nil {
		return nil, err
	}
	s.log.Debug("page index read", "db", db, "txid", s.txid, "plan_files", len(plan), "files", len(s.files),
		"plan_seconds", planned.Seconds(), "index_seconds", (time.Since(t0) - planned).Seconds())
	if opt.CacheDir != "" {
		if s.disk, err = sharedDiskCache(opt.CacheDir, opt.CacheBytes, s.log); err != nil {
			return nil, err
		}
	}
	s.pageShift = crc64iso.NewShift(int64(s.pageSize))
	s.frameShift = crc64iso.NewShift(ltx.PageHeaderSize + 4 + int64(s.pageSize))
	s.done.served = make([]uint64, (s.commit+63)/64)
	s.done.left = s.commit
	mem := opt.MemoryBytes
	if mem <= 0 {
		mem = 64 << 20
	}
	s.lru = newPageLRU(max(mem, lruFloor), s.commit)
	s.inflight = make([]*flight, s.commit)
	zero := make([]byte, s.pageSize)
	s.zero = cachedPage{data: zero, crc: crc64iso.Checksum(zero)}
	s.bg, s.stop = context.WithCancel(context.Background())
	return s, nil
}

// readIndexes reads the page indexes of plan newest first, several at once,
// and fills locs. Like apply, it stops at the first file that can add
// nothing (every page up to the smallest size since is placed) or that has
// another page size (a change that rewrote every page).
func (s *PageSource) readIndexes(ctx context.Context, plan []*ltx.FileInfo) error {
	type result struct {
		f   *fileIndex
		err error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make([]chan result, len(plan))
	for i := range results {
		results[i] = make(chan result, 1)
	}
	// Results are taken newest first, but the files too large to be read
	// in one request (a snapshot: its index alone is 3 MB for 1 GiB) are
	// started first, so that their reads and the decoding of their indexes
	// overlap those of the many small files instead of following them.
	order := make([]int, 0, len(plan)) // result indexes, in the order reads start
	for i := range plan {
		if plan[len(plan)-1-i].Size > tailRead {
			order = append(order, i)
		}
	}
	for i := range plan {
		if plan[len(plan)-1-i].Size <= tailRead {
			order = append(order, i)
		}
	}
	var next atomic.Int64
	for range min(indexParallel, len(plan)) {
		go func() {
			for k := int(next.Add(1) - 1); k < len(order) && ctx.Err() == nil; k = int(next.Add(1) - 1) {
				i := order[k]
				f, err := readFileIndex(ctx, s.r, s.db, plan[len(plan)-1-i])
				results[i] <- result{f, err}
			}
		}()
	}

	var limit uint32     // smallest Commit of the files read so far
	var firstHole uint32 // every page below it is placed (or is the lock page)
	for i := range plan {
		var res result
		select {
		case res = <-results[i]:
		case <-ctx.Done():
			return ctx.Err()
		}
		if res.err != nil {
			return res.err
		}
		f := res.f
		s.indexBytes.Add(f.fetched)
		if i == 0 {
			s.txid, s.time = f.hdr.MaxTXID, time.UnixMilli(f.hdr.Timestamp).UTC()
			s.pageSize, s.commit, s.lockPgno = f.hdr.PageSize, f.hdr.Commit, ltx.LockPgno(f.hdr.PageSize)
			s.locs = make([]pageLoc, s.commit)
			limit, firstHole = s.commit, 1
		} else {
			if f.hdr.PageSize != s.pageSize {
				break
			}
			newer := s.files[len(s.files)-1]
			if !newer.hdr.NoChecksum() && !f.hdr.NoChecksum() && newer.hdr.PreApplyChecksum != f.trailer.PostApplyChecksum {
				return errorf(ErrChecksumMismatch, "%s: pre-apply checksum %s does not match post-apply checksum %s of %s",
					newer.path, newer.hdr.PreApplyChecksum, f.trailer.PostApplyChecksum, f.path)
			}
		}
		s.files = append(s.files, f)
		limit = min(limit, f.hdr.Commit)
		for k, pgno := range f.pgnos {
			if pgno > limit {
				break
			}
			if l := &s.locs[pgno-1]; l.file == 0 && pgno != s.lockPgno {
				*l = pageLoc{file: uint32(len(s.files)), size: f.sizes[k], off: f.offs[k]}
				f.refs++
			}
		}
		f.pgnos, f.offs, f.sizes = nil, nil, nil // locs holds what is needed
		for firstHole <= limit && (firstHole == s.lockPgno || s.locs[firstHole-1].file != 0) {
			firstHole++
		}
		if firstHole > limit {
			break
		}
	}
	if s.opt.CacheDir != "" {
		for _, f := range s.files {
			f.cacheKey = cacheKey(s.opt.ReplicaID, f.path, f.info.Size, uint64(f.trailer.FileChecksum))
		}
	}
	return nil
}

// TXID is the transaction the source shows.
func (s *PageSource) TXID() ltx.TXID { return s.txid }

// Time is the commit time of TXID, from its LTX header.
func (s *PageSource) Time() time.Time { return s.time }

// PageSize is the database's page size in bytes.
func (s *PageSource) PageSize() uint32 { return s.pageSize }

// Size is the database file's size in bytes (0: deleted at TXID).
func (s *PageSource) Size() int64 { return int64(s.commit) * int64(s.pageSize) }

// FilesRead is how many LTX files the source's pages come from.
func (s *PageSource) FilesRead() int { return len(s.files) }

// Stats returns the bytes read from the replica so far.
func (s *PageSource) Stats() PageSourceStats {
	return PageSourceStats{IndexBytes: s.indexBytes.Load(), PageBytes: s.pageBytes.Load(), Requests: s.requests.Load()}
}

// Close stops readahead and waits for it. Reads after Close fail.
func (s *PageSource) Close() error {
	s.stop()
	s.wg.Wait()
	return nil
}

// ReadAt reads the database file: len(p) bytes at off, fewer with io.EOF at
// its end. It fetches the pages it does not have, each once however many
// readers want it at the same time.
func (s *PageSource) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	size := s.Size()
	if off < 0 {
		return 0, fmt.Errorf("read %s at %d: negative offset", s.db, off)
	}
	if off >= size || len(p) == 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), size-off))
	ps := int64(s.pageSize)
	first, last := uint32(off/ps)+1, uint32((off+int64(n)-1)/ps)+1
	pages, err := s.load(ctx, first, last)
	if err != nil {
		return 0, err
	}
	defer func() {
		for _, page := range pages {
			page.release()
		}
	}()
	if err := s.served(ctx, first, pages); err != nil {
		return 0, err
	}
	for i, page := range pages {
		start := (int64(first) + int64(i) - 1) * ps // file offset of the page
		lo, hi := max(start, off), min(start+ps, off+int64(n))
		copy(p[lo-off:hi-off], page.data[lo-start:hi-start])
	}
	if s.opt.Rollback && first == 1 && pages[0].data[18] == 2 && pages[0].data[19] == 2 {
		for i := int64(18); i <= 19; i++ {
			if i >= off && i < off+int64(n) {
				p[i-off] = 1
			}
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// load returns pages first..last, fetching those not in memory. A page
// another reader is fetching is waited for, not fetched twice. A page of a
// file that failed verification is an error, in memory or not. The caller
// releases each page returned once done with it.
func (s *PageSource) load(ctx context.Context, first, last uint32) ([]cachedPage, error) {
	var prev uint32 // the file checked last: runs of pages come from one file
	for pgno := first; pgno <= last; pgno++ {
		if l := s.locs[pgno-1]; l.file != 0 && l.file != prev {
			if err := s.files[l.file-1].check.failed(); err != nil {
				return nil, err
			}
			prev = l.file
		}
	}
	out := make([]cachedPage, last-first+1)
	for {
		var mine []uint32
		var waits []chan struct{}
		var fl *flight
		s.mu.Lock()
		for pgno := first; pgno <= last; pgno++ {
			if out[pgno-first].data != nil {
				continue
			}
			if s.locs[pgno-1].file == 0 || pgno == s.lockPgno {
				out[pgno-first] = s.zero
			} else if page, ok := s.lru.get(pgno, int(s.pageSize)); ok {
				out[pgno-first] = page
			} else if other := s.inflight[pgno-1]; other != nil {
				if len(waits) == 0 || waits[len(waits)-1] != other.done {
					waits = append(waits, other.done)
				}
			} else {
				if fl == nil {
					fl = &flight{done: make(chan struct{})}
				}
				s.inflight[pgno-1] = fl
				mine = append(mine, pgno)
			}
		}
		s.mu.Unlock()
		if len(mine) > 0 {
			got, err := s.fetch(ctx, mine)
			s.mu.Lock()
			for i, pgno := range mine {
				if err == nil && got[i].slab != nil {
					s.lru.add(got[i].slab)
				}
				s.inflight[pgno-1] = nil
			}
			s.mu.Unlock()
			close(fl.done)
			if err != nil {
				for _, page := range out {
					page.release()
				}
				return nil, err
			}
			for i, pgno := range mine {
				out[pgno-first] = got[i]
			}
		}
		if len(waits) == 0 {
			return out, nil
		}
		for _, w := range waits {
			select {
			case <-w:
			case <-ctx.Done():
				for _, page := range out {
					page.release()
				}
				return nil, ctx.Err()
			}
		}
		// The pages waited for are in memory now, unless their fetch failed
		// or they were evicted already: then the next round fetches them.
	}
}

// span is one ranged read: frames of one file, in file order, close together.
type span struct {
	f        *fileIndex
	off, end int64
	pgnos    []uint32 // ascending
	at       []int    // where each of pgnos is in the pages fetch was asked for
}

// fetch reads pgnos (ascending, each held by some file) from the replica,
// frames of a file that lie close together in one ranged read (a file's
// frames are in page order), several reads at once, and returns the pages
// in the order of pgnos, each holding a reference to its slab (the pages
// of one read share one), which the caller releases.
func (s *PageSource) fetch(ctx context.Context, pgnos []uint32) ([]cachedPage, error) {
	byFile := map[uint32]*span{} // the open span of each file
	var spans []*span
	maxPages := max(1, slabBytes/int(s.pageSize))
	for i, pgno := range pgnos {
		loc := s.locs[pgno-1]
		sp := byFile[loc.file]
		if sp == nil || loc.off-sp.end > maxGap || loc.off+int64(loc.size)-sp.off > maxSpan || len(sp.pgnos) == maxPages {
			sp = &span{f: s.files[loc.file-1], off: loc.off, end: loc.off}
			byFile[loc.file] = sp
			spans = append(spans, sp)
		}
		sp.end = loc.off + int64(loc.size)
		sp.pgnos = append(sp.pgnos, pgno)
		sp.at = append(sp.at, i)
	}

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		out      = make([]cachedPage, len(pgnos))
		firstErr error
	)
	for _, sp := range spans {
		select {
		case s.fetchSem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return nil, ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-s.fetchSem }()
			pages, err := s.fetchSpan(ctx, sp)
			if err != nil {
				mu.Lock()
				firstErr = cmp.Or(firstErr, err)
				mu.Unlock()
				return
			}
			for j, page := range pages {
				out[sp.at[j]] = page // each span its own indexes
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return out, nil
}

// fetchSpan reads one span and decodes its pages, in the order of
// sp.pgnos, into one new slab. Every frame in the span, those between the
// pages asked for included, is hashed towards the file's checksum (see
// verify.go).
func (s *PageSource) fetchSpan(ctx context.Context, sp *span) ([]cachedPage, error) {
	data, release, err := s.readRange(ctx, sp.f, sp.off, sp.end-sp.off)
	if err != nil {
		return nil, err
	}
	defer release()
	ps := int(s.pageSize)
	b := newSlab(sp.pgnos, ps, &s.slabs)
	if !sp.f.verified {
		n, err := s.hashFrames(sp.f, data, sp.off, b)
		if err == nil && n != len(sp.pgnos) {
			err = sp.f.corrupt(fmt.Errorf("the frames at %d..%d are not where the page index says", sp.off, sp.end))
		}
		if err != nil {
			return nil, err
		}
	} else {
		for j, pgno := range sp.pgnos {
			loc := s.locs[pgno-1]
			page := b.buf[j*ps : (j+1)*ps]
			if _, err := sp.f.decodeFrame(data[loc.off-sp.off:loc.off-sp.off+int64(loc.size)], pgno, page); err != nil {
				return nil, s.fail(sp.f, err)
			}
			b.crcs[j] = crc64iso.Checksum(page)
		}
	}
	pages := make([]cachedPage, len(sp.pgnos))
	for j := range pages {
		pages[j] = b.page(j, ps)
	}
	return pages, nil
}

// readRange reads n bytes of a file at off, through the disk cache if any,
// or from memory for a file read whole at open. The bytes are valid until
// release is called, which the caller must do.
func (s *PageSource) readRange(ctx context.Context, f *fileIndex, off, n int64) (data []byte, release func(), err error) {
	if f.whole != nil && off >= 0 && off+n <= int64(len(f.whole)) {
		return f.whole[off : off+n], func() {}, nil
	}
	get := func(b []byte, off int64) error {
		err := ship.ReadLTXAt(ctx, s.r, s.db, f.info.Level, f.info.MinTXID, f.info.MaxTXID, b, off)
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return f.corrupt(fmt.Errorf("shorter than its page index says"))
		} else if err != nil {
			return fmt.Errorf("read %s: %w", f.path, err)
		}
		total := s.pageBytes.Add(int64(len(b)))
		s.requests.Add(1)
		s.log.Debug("fetched", "db", s.db, "file", f.path, "off", off, "bytes", len(b), "total_bytes", total)
		return nil
	}
	if s.disk != nil {
		return s.disk.read(f.cacheKey, f.info.Size, off, n, get)
	}
	b := getBuf(int(n))
	if err := get(b, off); err != nil {
		putBuf(b)
		return nil, nil, err
	}
	return b, func() { putBuf(b) }, nil
}

// Buffers for ranged reads are reused: each read of a span would otherwise
// allocate (and the kernel then fault in) as many fresh bytes as it reads.
// A buffer holds the largest span, rounded out to disk cache chunks at both
// ends; at most bufKeep of them are kept for all page sources.
const (
	bufSize = maxSpan + 2*diskChunk
	bufKeep = fetchParallel + 2
)

var freeBufs = make(chan []byte, bufKeep)

// getBuf returns a buffer of n bytes, reused when n fits one.
func getBuf(n int) []byte {
	if n > bufSize {
		return make([]byte, n)
	}
	select {
	case b := <-freeBufs:
		return b[:n]
	default:
		return make([]byte, n, bufSize)
	}
}

// putBuf gives back a buffer of getBuf; no slice of it may be used after.
func putBuf(b []byte) {
	if cap(b) != bufSize {
		return
	}
	select {
	case freeBufs <- b[:bufSize]:
	default:
	}
}

// Reader reads a PageSource for one reader (one open file) and fetches
// ahead of it when it reads sequentially, so that copying the database out
// streams instead of waiting for one range at a time.
type Reader struct {
	s           *PageSource
	mu          sync.Mutex
	next, ahead uint32 // the page after the last read; the last page fetched ahead
	streak      uint32 // pages read in sequence so far
}

// NewReader returns a reader with its own readahead state.
func (s *PageSource) NewReader() *Reader { return &Reader{s: s} }

// ReadAt is PageSource.ReadAt, plus readahead. Once the reader streams,
// the pages it has read leave memory some way behind it (the kernel caches
// what it read), so that their buffers are reused for the pages ahead.
func (rd *Reader) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	s := rd.s
	if ps := int64(s.pageSize); off >= 0 && off < s.Size() && len(p) > 0 {
		first := uint32(off/ps) + 1
		last := uint32(min(s.Size()-1, off+int64(len(p))-1)/ps) + 1
		if rd.readahead(first, last) && first > dropLag/s.pageSize+1 {
			// The pages some way behind this read: far enough that
			// reads of a kernel readahead that arrive out of order
			// (several are in flight at once) still find theirs.
			hi := first - dropLag/s.pageSize - 1
			lo := max(1, int64(hi)-int64(last-first))
			s.mu.Lock()
			s.lru.dropBehind(uint32(lo), hi)
			s.mu.Unlock()
		}
	}
	return s.ReadAt(ctx, p, off)
}

// readahead starts fetching the pages after last in the background when
// this read continues the previous one, and says whether the reader is
// streaming (reads ahead).
func (rd *Reader) readahead(first, last uint32) bool {
	s := rd.s
	rd.mu.Lock()
	defer rd.mu.Unlock()
	// The kernel sends the reads of its own readahead several at a time,
	// and they arrive here out of order: by up to 14 MiB, in reads of
	// 512 KiB and 1 MiB, with a 4 MiB kernel readahead.
	slack := max(raSlack, min(raDisorder/s.pageSize, 32*(last-first+1)))
	seq := rd.next != 0 && first+slack >= rd.next && first <= rd.next+slack
	if !seq {
		rd.next, rd.ahead, rd.streak = last+1, last, 0
		return false
	}
	rd.next = max(rd.next, last+1)
	// A few sequential reads (SQLite reading neighbouring pages, the
	// kernel's own readahead at the start of a file) fetch nothing extra:
	// only a streak of raStreak bytes does, and the window grows with it.
	ps := s.pageSize
	rd.streak = min(rd.streak+last-first+1, readaheadBytes/ps)
	if rd.streak*ps < raStreak {
		return false
	}
	window := min(max(2*rd.streak, raStreak/ps), readaheadBytes/ps)
	if rd.ahead >= last+window/2 {
		return true
	}
	from, to := max(rd.ahead, last)+1, min(last+window, s.commit)
	if from > to {
		return true
	}
	select {
	case s.raSem <- struct{}{}:
	default:
		return true // enough in flight; a later read asks again
	}
	rd.ahead = to
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.raSem }()
		pages, err := s.load(s.bg, from, to)
		if err != nil && s.bg.Err() == nil {
			s.log.Debug("readahead", "db", s.db, "from", from, "to", to, "err", err)
		}
		for _, page := range pages {
			page.release()
		}
	}()
	return true
}
