package restore

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// fetcher downloads the files of a plan in the order apply reads them, in
// chunks fetched by several workers at once with ranged reads, so a restore
// keeps many requests in flight whether the history is one large snapshot
// or thousands of small commits.
//
// Invariant: chunks reach the reader in file order and byte order; at most
// 2*parallelism+1 chunks are held in memory at any time, besides those the
// decoder's batches still point into. A chunk whose read is cut short (a
// dropped connection) is resumed from the byte it reached.
//
// Full-size chunk buffers are reused: a chunk counts who holds its buffer
// (the reader until it moves past the chunk, and every batch with a block in
// it), and the last to let go returns the buffer to the free list. A holder
// that never lets go (an error path) only costs the reuse: the buffer goes to
// the garbage collector instead. The free list adds no memory: a buffer is
// made only when the list is empty.
type fetcher struct {
	ctx    context.Context
	cancel context.CancelFunc
	queue  chan *chunk // in order; closed after the last chunk
	wg     sync.WaitGroup
	prog   *Progress
	free   chan []byte // full-size buffers no chunk holds

	file int    // index of the file being read
	cur  *chunk // the chunk being read
	pos  int    // read position in cur.buf
	err  error  // why a download failed, once Read has returned it
}

// chunk is one byte range of one file of the plan.
type chunk struct {
	file int // index in the fetch order
	off  int64
	buf  []byte
	last bool // the file's final chunk
	err  error
	done chan struct{}

	refs atomic.Int32 // holders of buf; see fetcher
	free chan []byte  // where buf goes when refs reaches 0; nil: not reused
}

// pin adds a holder of c's buffer. Only a holder may call it.
func (c *chunk) pin() { c.refs.Add(1) }

// release drops a holder of c's buffer; after the last, buf is reused and
// no slice of it may be read.
func (c *chunk) release() {
	switch n := c.refs.Add(-1); {
	case n < 0:
		panic("restore: chunk released more often than pinned")
	case n == 0 && c.free != nil:
		select {
		case c.free <- c.buf[:cap(c.buf)]:
		default: // the free list is full
		}
	}
}

const (
	// chunkSize is the most bytes one ranged read asks for. Smaller chunks
	// mean more requests (1 MiB was slower from S3); larger ones, more bytes
	// in flight than the CPU caches hold, likely why a 1 GiB restore from a
	// file replica took 2.2 s with 4 MiB and 1.3 s with 2 MiB, while from S3
	// both took 3.7-3.8 s (docs/BENCHMARKS.md).
	chunkSize = 2 << 20
	// maxResumes is how often one chunk is resumed after a read that failed
	// half way before the restore gives up.
	maxResumes = 5
	// DefaultParallelism is how many reads a restore keeps in flight unless
	// told otherwise.
	DefaultParallelism = 8
)

// newFetcher starts downloading files (in the order given) from r.
func newFetcher(ctx context.Context, r ship.Replica, db string, files []*ltx.FileInfo, parallelism int, prog *Progress) *fetcher {
	if parallelism < 1 {
		parallelism = DefaultParallelism
	}
	ctx, cancel := context.WithCancel(ctx)
	f := &fetcher{ctx: ctx, cancel: cancel, queue: make(chan *chunk, parallelism), prog: prog, free: make(chan []byte, 2*parallelism+2)}
	work := make(chan *chunk)
	for range parallelism {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			for c := range work {
				c.err = fetchChunk(ctx, r, db, files[c.file], c, prog)
				close(c.done)
			}
		}()
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer close(f.queue)
		defer close(work)
		for i, fi := range files {
			for off := int64(0); off < fi.Size || off == 0; off += chunkSize {
				c := &chunk{file: i, off: off, last: off+chunkSize >= fi.Size, done: make(chan struct{})}
				f.alloc(c, int(max(min(chunkSize, fi.Size-off), 0)))
				select {
				case work <- c:
				case <-ctx.Done():
					return
				}
				select {
				case f.queue <- c:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return f
}

// alloc gives c a buffer of n bytes, held by the reader: a free one when n
// is large enough to be worth reusing. A reused buffer holds old bytes, but
// the reader sees a chunk only once fetchChunk has filled it.
func (f *fetcher) alloc(c *chunk, n int) {
	c.refs.Store(1)
	if n < chunkSize/2 {
		c.buf = make([]byte, n)
		return
	}
	c.free = f.free
	select {
	case b := <-f.free:
		c.buf = b[:n]
	default:
		c.buf = make([]byte, n, chunkSize)
	}
}

// fetchChunk fills c.buf from the file's bytes at c.off, resuming a read
// that fails after the request succeeded. A request that fails outright is
// not retried here: the replica client already retried it.
func fetchChunk(ctx context.Context, r ship.Replica, db string, fi *ltx.FileInfo, c *chunk, prog *Progress) error {
	path := ship.LTXPath(db, fi.Level, fi.MinTXID, fi.MaxTXID)
	got, resumes := 0, 0
	for {
		rc, err := r.ReadLTXRange(ctx, db, fi.Level, fi.MinTXID, fi.MaxTXID, c.off+int64(got), int64(len(c.buf)-got))
		if err != nil {
			return fmt.Errorf("read history of %s: %w", db, err)
		}
		n, err := io.ReadFull(rc, c.buf[got:])
		rc.Close()
		got += n
		prog.addBytes(int64(n))
		switch {
		case err == nil:
			return nil
		case err == io.EOF: // nothing more: the file is shorter than listed
			return errorf(ErrCorrupt, "%s: corrupt LTX file: %d bytes, the listing said %d", path, c.off+int64(got), fi.Size)
		case ctx.Err() != nil:
			return ctx.Err()
		}
		if n == 0 {
			resumes++
		} else {
			resumes = 0
		}
		if resumes > maxResumes {
			return fmt.Errorf("read %s: %w", path, err)
		}
		// The connection dropped; ask again from the byte reached.
		select {
		case <-time.After(time.Duration(resumes) * 200 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Read reads the bytes of the current file; it returns io.EOF at its end.
// next moves to the following file.
func (f *fetcher) Read(p []byte) (int, error) {
	if err := f.load(); err != nil {
		return 0, err
	}
	n := copy(p, f.cur.buf[f.pos:])
	f.pos += n
	return n, nil
}

// take returns the unread bytes of the current file's current chunk
// without copying them and consumes them; io.EOF at the file's end. The
// slice may be read until the next call to Read, take or atEnd moves past
// the chunk, unless the caller pins the chunk (current) first.
func (f *fetcher) take() ([]byte, error) {
	if err := f.load(); err != nil {
		return nil, err
	}
	b := f.cur.buf[f.pos:]
	f.pos = len(f.cur.buf)
	return b, nil
}

// unread gives back the last n bytes take returned, so the next Read or
// take returns them again. They must come from the chunk take last returned.
func (f *fetcher) unread(n int) { f.pos -= n }

// load makes f.cur a chunk of the current file with unread bytes, waiting
// for its download; io.EOF at the file's end.
func (f *fetcher) load() error {
	for {
		if c := f.cur; c != nil && c.file == f.file {
			if f.pos < len(c.buf) {
				return nil
			}
			if c.last {
				return io.EOF
			}
		}
		c, ok := <-f.queue
		if !ok {
			if err := f.ctx.Err(); err != nil {
				return err
			}
			return io.ErrUnexpectedEOF
		}
		select {
		case <-c.done:
		case <-f.ctx.Done():
			return f.ctx.Err()
		}
		if c.file < f.file {
			c.release() // the rest of a file the reader moved past
			continue
		}
		if c.err != nil {
			f.err = c.err
			return c.err
		}
		if f.cur != nil {
			f.cur.release()
		}
		f.cur, f.pos = c, 0
	}
}

// current is the chunk take last returned bytes of.
func (f *fetcher) current() *chunk { return f.cur }

// failure is the download error Read returned, if any: a decoder that
// stopped on it saw no corrupt file, only a failed read.
func (f *fetcher) failure() error {
	if f.err == nil && f.ctx.Err() != nil {
		return f.ctx.Err()
	}
	return f.err
}

// next moves to the next file; what the reader left of the current one is
// skipped.
func (f *fetcher) next() {
	f.file++
	f.prog.addFile()
}

// Download streams each of files, in the order given, to fn, which must
// read what it needs before returning. Files are downloaded ahead and in
// parallel as Restore downloads them, and a dropped read is resumed. The
// bytes are not verified: that is for whoever decodes them.
func Download(ctx context.Context, r ship.Replica, db string, files []*ltx.FileInfo, parallelism int, fn func(fi *ltx.FileInfo, rd io.Reader) error) error {
	f := newFetcher(ctx, r, db, files, parallelism, nil)
	defer f.close()
	for _, fi := range files {
		if err := fn(fi, f); err != nil {
			return cmp.Or(f.failure(), err)
		}
		f.next()
	}
	return nil
}

// close stops every download and waits for the workers.
func (f *fetcher) close() {
	f.cancel()
	f.wg.Wait()
}

// Progress counts what a restore has downloaded. Restore sets the totals
// once it has planned and updates the counters as it goes; another goroutine
// may read them at any time.
type Progress struct {
	TotalBytes atomic.Int64 // bytes of the files the plan may read
	TotalFiles atomic.Int64
	Bytes      atomic.Int64 // bytes downloaded so far
	Files      atomic.Int64 // files applied so far
}

func (p *Progress) addBytes(n int64) {
	if p != nil {
		p.Bytes.Add(n)
	}
}

func (p *Progress) addFile() {
	if p != nil {
		p.Files.Add(1)
	}
}
