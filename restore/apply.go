package restore

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"

	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// apply writes the database that plan (oldest file first) describes into out
// and returns what it wrote.
//
// It reads the files newest first (downloaded ahead, in parallel, by a
// fetcher), so every page is written once, by the
// newest file that has it. Invariant: a page P is written only if no newer
// file wrote it and P <= limit, the smallest Commit among the files read so
// far: a commit that truncated the database below P discarded every older
// version of P, so if a later commit grew the database again without writing
// P, P is zeros. The walk stops as soon as every page up to limit is written,
// because older files can add nothing; files not read are not verified, but
// the result is, against the newest file's post-apply checksum. A file whose
// page size differs from the final database's ends the walk the same way: the
// page-size change rewrote every page of the new database.
func apply(ctx context.Context, r ship.Replica, db string, plan []*ltx.FileInfo, out output, opt Options) (*Result, error) {
	newestFirst := slices.Clone(plan)
	slices.Reverse(newestFirst)
	if opt.Progress != nil {
		var total int64
		for _, fi := range plan {
			total += fi.Size
		}
		opt.Progress.TotalBytes.Store(total)
		opt.Progress.TotalFiles.Store(int64(len(plan)))
	}
	fetch := newFetcher(ctx, r, db, newestFirst, opt.Parallelism, opt.Progress)
	defer fetch.close()

	var (
		pw    *pageWriter
		res   *Result
		last  *ltxFile // the newest file: its post-apply checksum is the target
		newer *ltxFile // the file read just before f, one TXID range later
	)
	for _, fi := range newestFirst {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		blocks, err := blockFormat(fetch)
		if err != nil {
			return nil, cmp.Or(fetch.failure(), err)
		}
		var (
			f   *ltxFile
			r   *chunkReader // for a block-format file
			crc uint64       // its file checksum so far
		)
		if blocks {
			f, r = &ltxFile{path: ship.LTXPath(db, fi.Level, fi.MinTXID, fi.MaxTXID)}, &chunkReader{src: fetch}
			if crc, err = f.decodeHeader(r); err == nil {
				err = f.checkTXIDs(fi)
			}
		} else {
			f, err = openLTX(db, fi, fetch)
		}
		if err != nil {
			return nil, cmp.Or(fetch.failure(), err)
		}
		if pw == nil {
			pw = newPageWriter(out, f.hdr.PageSize, f.hdr.Commit)
			defer pw.close()
			res = &Result{TXID: f.hdr.MaxTXID, PageSize: f.hdr.PageSize, Commit: f.hdr.Commit}
			last = f
		} else if f.hdr.PageSize != pw.pageSize {
			break
		}
		if blocks {
			err = f.applyBlocks(ctx, r, crc, pw)
		} else {
			err = f.applyTo(ctx, pw)
		}
		if err != nil {
			return nil, cmp.Or(fetch.failure(), err)
		}
		fetch.next()
		if newer != nil && !newer.hdr.NoChecksum() && !f.hdr.NoChecksum() &&
			newer.hdr.PreApplyChecksum != f.trailer.PostApplyChecksum {
			return nil, errorf(ErrChecksumMismatch, "%s: pre-apply checksum %s does not match post-apply checksum %s of %s",
				newer.path, newer.hdr.PreApplyChecksum, f.trailer.PostApplyChecksum, f.path)
		}
		newer = f
		if pw.complete() {
			break
		}
	}

	sum, err := pw.finish()
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", db, err)
	}
	if !last.hdr.NoChecksum() && sum != last.trailer.PostApplyChecksum {
		return nil, errorf(ErrChecksumMismatch, "%s: restored database has checksum %s, not the post-apply checksum %s",
			last.path, sum, last.trailer.PostApplyChecksum)
	}
	res.Checksum = sum
	res.Bytes = int64(res.Commit) * int64(res.PageSize)
	return res, nil
}

// ltxFile is one LTX file being read: its header is decoded when it is
// opened, its trailer once applyTo has verified the whole file.
type ltxFile struct {
	path    string // relative to the replica, for messages
	dec     *ltx.Decoder
	hdr     ltx.Header
	trailer ltx.Trailer
}

// openLTX starts decoding one file from rd, which yields its bytes.
func openLTX(db string, fi *ltx.FileInfo, rd io.Reader) (*ltxFile, error) {
	f := &ltxFile{path: ship.LTXPath(db, fi.Level, fi.MinTXID, fi.MaxTXID)}
	f.dec = ltx.NewDecoder(rd)
	f.dec.SetRetainPageIndex(false)
	if err := f.dec.DecodeHeader(); err != nil {
		return nil, f.corrupt(fmt.Errorf("header: %w", err))
	}
	f.hdr = f.dec.Header()
	return f, f.checkTXIDs(fi)
}

// checkTXIDs checks that the header is the file's the listing named.
func (f *ltxFile) checkTXIDs(fi *ltx.FileInfo) error {
	if f.hdr.MinTXID != fi.MinTXID || f.hdr.MaxTXID != fi.MaxTXID {
		return f.corrupt(fmt.Errorf("header holds txids %s through %s", f.hdr.MinTXID, f.hdr.MaxTXID))
	}
	return nil
}

// applyTo decodes every page of the file, hands each to pw, and verifies the
// file checksum in the trailer.
func (f *ltxFile) applyTo(ctx context.Context, pw *pageWriter) error {
	pw.setCommit(f.hdr.Commit)
	data := make([]byte, f.hdr.PageSize)
	var ph ltx.PageHeader
	for n := 0; ; n++ {
		if n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		err := f.dec.DecodePage(&ph, data)
		if err == io.EOF {
			break
		} else if err != nil {
			return f.corrupt(fmt.Errorf("page %d: %w", n+1, err))
		}
		if err := pw.put(ph.Pgno, data); err != nil {
			return err
		}
	}
	if err := f.dec.Close(); err != nil {
		return f.corrupt(err)
	}
	f.trailer = f.dec.Trailer()
	return nil
}

func (f *ltxFile) corrupt(err error) error {
	return &kindError{kind: ErrCorrupt, cause: err, msg: fmt.Sprintf("%s: corrupt LTX file: %v", f.path, err)}
}

// maxRun is the most bytes of contiguous pages pageWriter gathers into one write.
const maxRun = 1 << 20

// pageWriter places pages in the output file, records which pages it has
// written, and folds each into the database checksum. Pages of block-format
// files are claimed here and written by batchDecoder's workers, which hand
// back their checksums; pages ltx.Decoder decodes arrive in order and are
// gathered into runs, and a second goroutine checksums and writes each run
// while the decoder fills the next.
type pageWriter struct {
	out       output
	pageSize  uint32
	commit    uint32   // final database size in pages
	lockPgno  uint32   // never written: zeros in the output
	limit     uint32   // smallest Commit seen; pages above it are not written
	written   []uint64 // bit pgno-1 is set once page pgno is written
	firstHole uint64   // every page below it is written (or is the lock page)

	runStart uint32 // pgno of the first page in run
	run      []byte // pages not yet handed to the writer

	runs chan pageRun // to the writer goroutine
	free chan []byte  // run buffers the writer is done with
	done chan struct{}
	sum  ltx.Checksum // of the pages written; the writer's until done is closed
	err  error        // the writer's first error; valid once done is closed

	batches *batchDecoder // for block-format files, made on first use
	xor     uint64        // XOR of the page checksums the batches wrote
}

// pageRun is a run of contiguous pages starting at pgno.
type pageRun struct {
	pgno uint32
	data []byte
}

// runBuffers is how many runs can be in flight between the decoder and the
// writer.
const runBuffers = 4

func newPageWriter(out output, pageSize, commit uint32) *pageWriter {
	w := &pageWriter{
		out:       out,
		pageSize:  pageSize,
		commit:    commit,
		lockPgno:  ltx.LockPgno(pageSize),
		limit:     commit,
		written:   make([]uint64, (uint64(commit)+63)/64),
		firstHole: 1,
		runs:      make(chan pageRun, runBuffers),
		free:      make(chan []byte, runBuffers+1),
		done:      make(chan struct{}),
	}
	for range runBuffers + 1 {
		w.free <- make([]byte, 0, maxRun)
	}
	w.run = <-w.free
	go w.writeRuns(w.runs)
	return w
}

// writeRuns checksums and writes each run, until runs is closed.
func (w *pageWriter) writeRuns(runs <-chan pageRun) {
	defer close(w.done)
	hasher := ltx.NewHasher()
	sum := ltx.ChecksumFlag
	for r := range runs {
		if w.err == nil {
			for off := 0; off < len(r.data); off += int(w.pageSize) {
				pgno := r.pgno + uint32(off)/w.pageSize
				sum = ltx.ChecksumFlag | (sum ^ ltx.ChecksumPageWithHasher(hasher, pgno, r.data[off:off+int(w.pageSize)]))
			}
			_, w.err = w.out.WriteAt(r.data, int64(r.pgno-1)*int64(w.pageSize))
		}
		w.free <- r.data[:0]
	}
	w.sum = sum
}

func (w *pageWriter) has(pgno uint32) bool {
	return w.written[(pgno-1)/64]&(1<<((pgno-1)%64)) != 0
}

// setCommit lowers the limit to the Commit of the next (older) file.
func (w *pageWriter) setCommit(commit uint32) { w.limit = min(w.limit, commit) }

// claim reports whether page pgno of the current file goes into the
// output, and records it as written if so: not if a newer file wrote it or a
// truncation since the current file removed it.
func (w *pageWriter) claim(pgno uint32) bool {
	if pgno == 0 || pgno > w.limit || pgno == w.lockPgno || w.has(pgno) {
		return false
	}
	w.written[(pgno-1)/64] |= 1 << ((pgno - 1) % 64)
	return true
}

// batchDecoder returns the decoder of block-format files, which writes to
// the output directly.
func (w *pageWriter) batchDecoder() *batchDecoder {
	if w.batches == nil {
		w.batches = newBatchDecoder(w.pageSize, w.out)
	}
	return w.batches
}

// addSum folds the checksums of pages a batch wrote into the database
// checksum.
func (w *pageWriter) addSum(xor uint64) { w.xor ^= xor }

// put writes page pgno unless claim refuses it.
func (w *pageWriter) put(pgno uint32, data []byte) error {
	if !w.claim(pgno) {
		return nil
	}
	next := w.runStart + uint32(len(w.run))/w.pageSize
	if len(w.run) > 0 && (pgno != next || len(w.run)+len(data) > maxRun) {
		w.flush()
	}
	if len(w.run) == 0 {
		w.runStart = pgno
	}
	w.run = append(w.run, data...)
	return nil
}

// flush hands the pending run to the writer.
func (w *pageWriter) flush() {
	if len(w.run) == 0 {
		return
	}
	w.runs <- pageRun{pgno: w.runStart, data: w.run}
	w.run = <-w.free
}

// close stops the writer and returns its error. Safe to call more than once.
func (w *pageWriter) close() error {
	if w.runs != nil {
		w.flush()
		close(w.runs)
		w.runs = nil
	}
	<-w.done
	return w.err
}

// complete reports whether older files can add nothing: every page up to
// the limit is written.
func (w *pageWriter) complete() bool {
	for w.firstHole <= uint64(w.limit) && (w.firstHole == uint64(w.lockPgno) || w.has(uint32(w.firstHole))) {
		w.firstHole++
	}
	return w.firstHole > uint64(w.limit)
}

// finish writes what is pending, folds the pages no file wrote (zeros) into
// the checksum, sets the file size, and returns the database checksum.
func (w *pageWriter) finish() (ltx.Checksum, error) {
	if err := w.close(); err != nil {
		return 0, err
	}
	w.sum = ltx.ChecksumFlag | (w.sum ^ ltx.Checksum(w.xor))
	var zeros *zeroPageSums
	for i, word := range w.written {
		if word == ^uint64(0) {
			continue
		}
		for b := range uint64(64) {
			pgno := uint64(i)*64 + b + 1
			if pgno > uint64(w.commit) {
				break
			}
			if word&(1<<b) != 0 || pgno == uint64(w.lockPgno) {
				continue
			}
			if zeros == nil {
				zeros = newZeroPageSums(w.pageSize)
			}
			w.sum = ltx.ChecksumFlag | (w.sum ^ zeros.sum(uint32(pgno)))
		}
	}
	if err := w.out.Truncate(int64(w.commit) * int64(w.pageSize)); err != nil {
		return 0, err
	}
	return w.sum, nil
}
