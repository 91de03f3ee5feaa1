package ship

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/superfly/ltx"

	"github.com/sqlfs/sqlfs/pager/crc64iso"
	"golang.org/x/sys/unix"
)

// Store is a mount's local store: a FileReplica plus, per database, a capture
// log.
//
// Creating a file costs more on this kind of machine than everything else a
// small commit does, so a commit's LTX is first appended to the database's
// capture log (one write) and then written out as its own file in the layout
// by a background goroutine, milliseconds later. Readers that open the store
// with OpenLocal see both, so history is complete the moment a commit returns.
//
// Invariants: every LTX appended to a log is in the layout or still in that
// log; a log is emptied only after the files it holds were made durable. A
// record is acknowledged only once its append returned, so a torn tail after
// a crash was never acknowledged and is dropped.
type Store struct {
	*FileReplica
	log *slog.Logger

	// OnAppend, if set before the first Append, is called after each commit
	// is stored (outside the store's lock): the uploader's wake-up.
	OnAppend func(db string, maxTXID ltx.TXID)

	mu      sync.Mutex
	logs    map[string]*captureLog
	wake    chan struct{}
	done    chan struct{}
	closed  bool
	closing time.Time // when Close was called
	rbuf    []byte    // used by the writer goroutine only
	// backlog is the bytes of logged commits not yet written out, and
	// lastAppend the time of the newest; both under mu.
	backlog    int64
	lastAppend time.Time
	buf        bytes.Buffer // encodes one commit; under mu, kept at its largest size
}

// logRecordMax is the largest LTX that goes through the log; larger ones
// (snapshots, big transactions) are written as files directly, where the cost
// of creating a file does not matter.
const logRecordMax = 1 << 20

// logTrimSize is the log size past which a drained log is emptied.
//
// The log file is written full of zeros once (logPrealloc bytes) and then
// overwritten in place from the start after every trim: an fdatasync of a
// file whose size and extents do not change flushes data only, without a
// journal commit, which halves the cost of synchronous=FULL. What lies past
// the live records is older records (lower TXIDs) or zeros; readers stop at
// the first record whose TXID does not ascend.
const logTrimSize = 4 << 20

// Record framing: magic, length of the LTX, the LTX, CRC-64 of the LTX.
var recordMagic = [4]byte{'s', 'q', 'l', 'r'}

const recordOverhead = 4 + 4 + 8

type captureLog struct {
	db   string
	path string
	fd   int
	size int64 // end of the live records: where the next one goes

	queue  []logRecord // appended, not yet in the layout
	pins   int         // readers reading queued records outside the lock: no trim
	dirty  bool        // appended since the last fdatasync
	direct bool        // a large commit was written as a file since the last sync

	// tail is a copy of the newest bytes of the log, from tailFrom to size
	// (log byte off is at tail[off%len(tail)]), kept once a backlog merge
	// has read the log (readLogged): what the uploader ships was appended
	// milliseconds before, and a copy out of memory costs a fraction of a
	// read from the page cache. Nil until then.
	tail       []byte
	tailFrom   int64
	tailMapped bool // tail is from newTail's mmap: Close unmaps it
}

// tailSize is the size of a capture log's in-memory tail: at full speed
// (about 5 MB of LTX a second) the commits of several merged uploads. A
// variable for tests.
var tailSize = 16 << 20

// newTail returns n bytes of memory for a capture log's tail, in huge pages
// where the kernel has them: on this kind of machine a page fault costs
// ~20 µs, and 16 MiB of fresh 4 KiB pages took 70 ms of CPU to touch, paid
// again by every database's first merge. Go's heap does not ask for huge
// pages. Fresh Go memory where mmap fails.
func newTail(n int) (b []byte, mapped bool) {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return make([]byte, n), false
	}
	unix.Madvise(b, unix.MADV_HUGEPAGE) // only a hint: 4 KiB pages work the same
	return b, true
}

// keep copies b, just written at log offset off, into the tail.
func (l *captureLog) keep(b []byte, off int64) {
	if l.tail == nil {
		return
	}
	n := int64(len(l.tail))
	if int64(len(b)) > n {
		b, off = b[int64(len(b))-n:], off+int64(len(b))-n
	}
	for len(b) > 0 {
		m := copy(l.tail[off%n:], b)
		b, off = b[m:], off+int64(m)
	}
	l.tailFrom = max(l.tailFrom, off-n)
}

// readAt reads len(buf) bytes of the log file at off; a short read is an
// error.
func (l *captureLog) readAt(buf []byte, off int64) error {
	m, err := unix.Pread(l.fd, buf, off)
	if err == nil && m != len(buf) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return &os.PathError{Op: "read", Path: l.path, Err: err}
	}
	return nil
}

// fromTail copies log bytes [off, off+len(buf)) out of the tail into buf,
// and reports whether the tail held them.
func (l *captureLog) fromTail(buf []byte, off int64) bool {
	if l.tail == nil || off < l.tailFrom || off+int64(len(buf)) > l.size {
		return false
	}
	n := int64(len(l.tail))
	for len(buf) > 0 {
		m := copy(buf, l.tail[off%n:])
		buf, off = buf[m:], off+int64(m)
	}
	return true
}

// logRecord is one LTX in a log: data is set when read back from a log file,
// off and n locate it in the live log (bytes of the LTX, without framing).
type logRecord struct {
	min, max ltx.TXID
	off      int64
	n        int
	data     []byte
}

// LogPath is the capture log of one database relative to the store root.
func LogPath(db string) string { return filepath.Join(db, "capture.log") }

// OpenStore opens the local store at dir and starts writing logged commits
// out as files.
func OpenStore(dir string, log *slog.Logger) *Store {
	s := &Store{FileReplica: NewFileReplica(dir), log: log, logs: map[string]*captureLog{},
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	go s.run()
	return s
}

// Recover writes out what a previous run left in db's capture log and makes
// it durable; the next Append starts the log over. Call it before the
// database's first Append.
func (s *Store) Recover(db string) error {
	path := filepath.Join(s.Root, LogPath(db))
	recs, _, err := readLog(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	n := 0
	for _, r := range recs {
		// A file written out from the log but never synced may be torn,
		// or of the right size and zeros after a power loss: only one
		// that holds the record's bytes is kept.
		have, err := os.ReadFile(filepath.Join(s.Root, LTXPath(db, 0, r.min, r.max)))
		if err == nil && bytes.Equal(have, r.data) {
			continue
		}
		if err := s.WriteLTX(db, 0, r.min, r.max, r.data, false); err != nil {
			return err
		}
		n++
	}
	if len(recs) > 0 {
		if err := s.SyncAll(); err != nil {
			return err
		}
	}
	if n > 0 {
		s.log.Info("recovered commits from the capture log", "db", db, "files", n)
	}
	return nil
}

// Append stores one LTX file of db, whose bytes write produces. With durable
// set it is on stable storage when Append returns.
func (s *Store) Append(db string, minTXID, maxTXID ltx.TXID, write func(io.Writer) error, durable bool) error {
	if err := s.append(db, minTXID, maxTXID, write, durable); err != nil {
		return err
	}
	if s.OnAppend != nil {
		s.OnAppend(db, maxTXID)
	}
	return nil
}

// ReadLTX returns the bytes of one stored commit, from the capture log while
// it is there (checked against the record's CRC-64), else from its file
// (complete once it has left the log).
func (s *Store) ReadLTX(db string, minTXID, maxTXID ltx.TXID) ([]byte, error) {
	s.mu.Lock()
	if l := s.logs[db]; l != nil {
		for i := len(l.queue) - 1; i >= 0; i-- {
			if r := l.queue[i]; r.min == minTXID && r.max == maxTXID {
				buf := make([]byte, r.n+8)
				var err error
				if !l.fromTail(buf, r.off) {
					err = l.readAt(buf, r.off)
				}
				s.mu.Unlock()
				if err != nil {
					return nil, err
				}
				if err := checkRecord(buf, r); err != nil {
					return nil, fmt.Errorf("%s: %w", l.path, err)
				}
				return buf[:r.n:r.n], nil
			}
		}
	}
	s.mu.Unlock()
	data, err := os.ReadFile(filepath.Join(s.Root, LTXPath(db, 0, minTXID, maxTXID)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", LTXPath(db, 0, minTXID, maxTXID), ErrNotFound)
	}
	return data, err
}

// ReadCommits returns the bytes of the stored commits of db from minTXID on,
// one LTX file each, up to maxTXID or until maxBytes are read. Commits still
// in the capture log are read with one read for each run of them: this is
// how a backlog merge reads thousands of commits. sealed[i] says that
// commit i came from the log and its bytes matched the record's CRC-64,
// taken when the capture stored them; the others were read from files.
//
// Runs read out of the log are placed in *scratch (nil: fresh memory),
// which is grown as needed and kept there for the next call: the returned
// commits may alias it until then. A backlog merge reads megabytes at a
// time, and fresh memory for each cost more in page faults than the copy.
func (s *Store) ReadCommits(db string, minTXID, maxTXID ltx.TXID, maxBytes int, scratch *[]byte) (commits [][]byte, sealed []bool, err error) {
	if scratch == nil {
		scratch = new([]byte)
	}
	*scratch = (*scratch)[:0]
	total := 0
	for txid := minTXID; txid <= maxTXID && total < maxBytes; {
		run, err := s.readLogged(db, txid, maxTXID, maxBytes-total, scratch)
		if err != nil {
			return nil, nil, err
		}
		logged := len(run) > 0
		if !logged {
			data, err := s.ReadLTX(db, txid, txid)
			if err != nil {
				return nil, nil, err
			}
			run = [][]byte{data}
		}
		for _, data := range run {
			total += len(data)
			sealed = append(sealed, logged)
		}
		commits = append(commits, run...)
		txid += ltx.TXID(len(run))
	}
	return commits, sealed, nil
}

// checkRecord checks one capture log record's LTX bytes, read with the
// 8-byte CRC-64 that follows them in the log (buf), against that CRC.
func checkRecord(buf []byte, r logRecord) error {
	if crc64iso.Checksum(buf[:r.n]) != binary.BigEndian.Uint64(buf[r.n:]) {
		return fmt.Errorf("capture log record of txid %s: %w", r.max, ltx.ErrChecksumMismatch)
	}
	return nil
}

// readLogged reads the longest run of single-commit records minTXID,
// minTXID+1, ... (at most maxTXID, at least one record and at most about
// maxBytes) from db's capture log — copied from its in-memory tail when it
// holds them, else with one read, for which the log is pinned, so it is not
// emptied under the read, and Append does not wait for it — and checks each
// against its CRC-64.
func (s *Store) readLogged(db string, minTXID, maxTXID ltx.TXID, maxBytes int, scratch *[]byte) ([][]byte, error) {
	s.mu.Lock()
	l := s.logs[db]
	if l == nil {
		s.mu.Unlock()
		return nil, nil
	}
	q := l.queue
	i := sort.Search(len(q), func(i int) bool { return q[i].min >= minTXID })
	j, n := i, 0
	for j < len(q) && q[j].min == minTXID+ltx.TXID(j-i) && q[j].max == q[j].min && q[j].min <= maxTXID &&
		(j == i || q[j].off == q[j-1].off+int64(q[j-1].n+recordOverhead)) && (j == i || n < maxBytes) {
		n += q[j].n
		j++
	}
	run := slices.Clone(q[i:j])
	if len(run) == 0 {
		s.mu.Unlock()
		return nil, nil
	}
	first, last := run[0], run[len(run)-1]
	need := int(last.off + int64(last.n) + 8 - first.off) // with the last record's CRC
	if cap(*scratch)-len(*scratch) < need {
		// Runs read before stay in the old array, which they keep alive.
		*scratch = make([]byte, 0, max(2*cap(*scratch), need))
	}
	at := len(*scratch)
	*scratch = (*scratch)[:at+need]
	buf := (*scratch)[at : at+need : at+need]
	if l.tail == nil {
		l.tail, l.tailMapped = newTail(tailSize)
		l.tailFrom = l.size // it holds appends from now on
	}
	if l.fromTail(buf, first.off) {
		s.mu.Unlock()
	} else {
		l.pins++
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			l.pins--
			s.mu.Unlock()
		}()
		if err := l.readAt(buf, first.off); err != nil {
			return nil, err
		}
	}
	out := make([][]byte, len(run))
	for k, r := range run {
		at := r.off - first.off
		if err := checkRecord(buf[at:at+int64(r.n)+8], r); err != nil {
			return nil, fmt.Errorf("%s: %w", l.path, err)
		}
		out[k] = buf[at : at+int64(r.n) : at+int64(r.n)]
	}
	return out, nil
}

func (s *Store) append(db string, minTXID, maxTXID ltx.TXID, write func(io.Writer) error, durable bool) error {
	l, err := s.captureLog(db)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Reset()
	s.buf.Write(zero8[:])
	if err := write(&s.buf); err != nil {
		return err
	}
	n := s.buf.Len() - 8
	if n > logRecordMax {
		// Written straight into the layout; readers find it there.
		data := s.buf.Bytes()[8:]
		l.direct = !durable
		return s.CreateLTX(db, 0, minTXID, maxTXID, func(w io.Writer) error {
			_, err := w.Write(data)
			return err
		}, durable)
	}
	b := s.buf.Bytes()
	copy(b[0:4], recordMagic[:])
	binary.BigEndian.PutUint32(b[4:8], uint32(n))
	b = binary.BigEndian.AppendUint64(b, crc64iso.Checksum(b[8:]))
	for off := 0; off < len(b); {
		m, err := unix.Pwrite(l.fd, b[off:], l.size+int64(off))
		if err != nil {
			return &os.PathError{Op: "write", Path: l.path, Err: err}
		}
		off += m
	}
	l.keep(b, l.size)
	l.queue = append(l.queue, logRecord{min: minTXID, max: maxTXID, off: l.size + 8, n: n})
	l.size += int64(len(b))
	wake := s.backlog == 0 || (s.backlog < writeOutBacklog && s.backlog+int64(n) >= writeOutBacklog)
	s.backlog += int64(n)
	s.lastAppend = time.Now()
	l.dirty = true
	if durable {
		if err := unix.Fdatasync(l.fd); err != nil {
			return &os.PathError{Op: "fsync", Path: l.path, Err: err}
		}
		l.dirty = false
	}
	if wake {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// SyncDB makes every LTX of db appended so far durable.
func (s *Store) SyncDB(db string) error {
	s.mu.Lock()
	l := s.logs[db]
	dirty := l != nil && l.dirty
	direct := l != nil && l.direct
	if l != nil {
		l.dirty, l.direct = false, false
	}
	s.mu.Unlock()
	if dirty {
		if err := unix.Fdatasync(l.fd); err != nil {
			s.mu.Lock()
			l.dirty = true
			s.mu.Unlock()
			return &os.PathError{Op: "fsync", Path: l.path, Err: err}
		}
	}
	if direct {
		return s.FileReplica.Sync() // a large commit written as a file
	}
	return nil
}

func (s *Store) captureLog(db string) (*captureLog, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.logs[db]; l != nil {
		return l, nil
	}
	if err := os.MkdirAll(filepath.Join(s.Root, LevelDir(db, 0)), 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(s.Root, LogPath(db))
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := syncDir(filepath.Join(s.Root, db)); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if st.Size < logPrealloc {
		if err := preallocate(fd, st.Size, logPrealloc); err != nil {
			unix.Close(fd)
			return nil, &os.PathError{Op: "preallocate", Path: path, Err: err}
		}
	}
	// Recover has written out whatever the log held: start over at 0.
	l := &captureLog{db: db, path: path, fd: fd}
	s.logs[db] = l
	return l, nil
}

// run writes logged commits out as files, oldest first, and empties drained
// logs once what they held is durable.
func (s *Store) run() {
	defer close(s.done)
	// Writing files out is background work: run it on a thread the kernel
	// schedules only when the CPU is otherwise idle, and only once commits
	// pause (writeOutIdle) or the backlog grows past writeOutBacklog, so it
	// does not compete with a burst of commits for the filesystem.
	runtime.LockOSThread()
	if err := unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_IDLE}, 0); err != nil {
		unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
	}
	draining := false
	for {
		s.mu.Lock()
		closed, backlog, idle := s.closed, s.backlog, time.Since(s.lastAppend) >= writeOutIdle
		s.mu.Unlock()
		switch {
		case backlog >= writeOutBacklog:
			draining = true
		case backlog < writeOutBacklog/2 && !idle && !closed:
			draining = false
		}
		if backlog > 0 && (draining || idle || closed) {
			if closed && time.Since(s.closing) > closeWriteOut {
				return // the rest stays in the log: the next Recover writes it out
			}
			s.writeOut()
			continue
		}
		if closed {
			return
		}
		if backlog == 0 {
			s.trim(false)
		}
		wait := writeOutIdle
		if backlog == 0 {
			wait = time.Second
		}
		select {
		case <-s.wake:
		case <-time.After(wait):
		}
	}
}

// closeWriteOut bounds how long Close goes on writing logged commits out:
// they are safe in the log, and a stop must not wait on a backlog of tens of
// thousands of files written by a thread that runs only when the CPU is idle.
var closeWriteOut = 2 * time.Second // a variable for tests

// writeOutIdle is how long commits must pause before the writer starts, and
// writeOutBacklog the logged bytes at which it starts anyway.
const (
	writeOutIdle    = 20 * time.Millisecond
	writeOutBacklog = logTrimSize
)

// writeOut writes the oldest queued record of each log; it reports whether
// there was any.
func (s *Store) writeOut() bool {
	s.mu.Lock()
	var todo []*captureLog
	for _, l := range s.logs {
		if len(l.queue) > 0 {
			todo = append(todo, l)
		}
	}
	s.mu.Unlock()
	for _, l := range todo {
		s.mu.Lock()
		r := l.queue[0]
		s.mu.Unlock()
		if cap(s.rbuf) < r.n {
			s.rbuf = make([]byte, r.n)
		}
		data := s.rbuf[:r.n]
		err := l.readAt(data, r.off)
		if err == nil {
			err = s.writeFile(l.db, r, data)
		}
		if err != nil {
			s.log.Error("writing out a logged commit; it stays in the log", "db", l.db, "txid", r.max, "err", err)
			time.Sleep(time.Second)
			continue
		}
		s.mu.Lock()
		l.queue = l.queue[1:]
		s.backlog -= int64(r.n)
		s.mu.Unlock()
	}
	return len(todo) > 0
}

// writeFile writes a logged commit out under its final name, without the
// temporary file and rename CreateLTX uses: until the log is trimmed (after
// the file is durable) readers take the commit from the log, never from a
// file that may be half written.
func (s *Store) writeFile(db string, r logRecord, data []byte) error {
	path := filepath.Join(s.Root, LTXPath(db, 0, r.min, r.max))
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return &os.PathError{Op: "create", Path: path, Err: err}
	}
	_, err = fdWriter(fd).Write(data)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		unix.Unlink(path)
		return &os.PathError{Op: "write", Path: path, Err: err}
	}
	return nil
}

// trim empties drained logs past logTrimSize (all drained logs when force):
// first the files they were written to are made durable.
func (s *Store) trim(force bool) {
	s.mu.Lock()
	var drained []*captureLog
	for _, l := range s.logs {
		if len(l.queue) == 0 && l.pins == 0 && l.size > 0 && (force || l.size >= logTrimSize) {
			drained = append(drained, l)
		}
	}
	s.mu.Unlock()
	if len(drained) == 0 {
		return
	}
	if err := s.SyncAll(); err != nil {
		s.log.Error("syncing the local store", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range drained {
		if len(l.queue) != 0 || l.pins != 0 {
			continue // appended or being read meanwhile: next time
		}
		// Readers must see an empty log, not the records now in files
		// (which retention may remove later): break the first record's magic.
		if _, err := unix.Pwrite(l.fd, zero8[:len(recordMagic)], 0); err != nil {
			s.log.Error("emptying capture log", "path", l.path, "err", err)
			continue
		}
		l.size, l.dirty, l.tailFrom = 0, false, 0
	}
}

// Close writes logged commits out for at most closeWriteOut, empties the
// logs that are drained, makes the others durable and stops. What stays in
// a log is written out by the next Recover; readers (Local) read it there.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed, s.closing = true, time.Now()
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	<-s.done
	s.trim(true)
	s.mu.Lock()
	var err error
	for _, l := range s.logs {
		// Commits not written out stay in the log, which must then be durable.
		if l.dirty {
			if serr := unix.Fdatasync(l.fd); serr != nil && err == nil {
				err = &os.PathError{Op: "fsync", Path: l.path, Err: serr}
			}
		}
		unix.Close(l.fd)
		if l.tailMapped { // read and written only under mu
			unix.Munmap(l.tail)
		}
		l.tail, l.tailMapped = nil, false
	}
	s.logs = map[string]*captureLog{}
	s.mu.Unlock()
	return err
}

const logPrealloc = logTrimSize + 2*logRecordMax

// preallocate writes zeros from size to n and makes them durable.
func preallocate(fd int, size, n int64) error {
	zeros := make([]byte, 1<<20)
	for off := size; off < n; {
		m, err := unix.Pwrite(fd, zeros[:min(int64(len(zeros)), n-off)], off)
		if err != nil {
			return err
		}
		off += int64(m)
	}
	return unix.Fsync(fd)
}

// readLog returns the complete records of a capture log and the offset after
// the last one. A torn or damaged tail ends the log. It reads record by
// record: a log emptied after a burst keeps its size (it is reused from the
// start), and only its live records are read, not the whole file.
func readLog(path string) ([]logRecord, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	var (
		recs []logRecord
		off  int64
		head [8]byte
	)
	for {
		if _, err := io.ReadFull(br, head[:]); err != nil {
			break // the end, or a torn header
		}
		if !bytes.Equal(head[:4], recordMagic[:]) {
			break
		}
		n := int(binary.BigEndian.Uint32(head[4:]))
		if n > logRecordMax {
			break
		}
		rec := make([]byte, n+8)
		if _, err := io.ReadFull(br, rec); err != nil {
			break
		}
		body := rec[:n:n]
		if crc64iso.Checksum(body) != binary.BigEndian.Uint64(rec[n:]) {
			break
		}
		var h ltx.Header
		if h.UnmarshalBinary(body) != nil || h.Validate() != nil {
			break
		}
		if len(recs) > 0 && h.MinTXID <= recs[len(recs)-1].max {
			break // an older record left from before the log was last emptied
		}
		recs = append(recs, logRecord{min: h.MinTXID, max: h.MaxTXID, off: off + 8, n: n, data: body})
		off += int64(recordOverhead + n)
	}
	return recs, off, nil
}

var zero8 [8]byte

// Local reads a local store, including commits still in capture logs, so a
// listing or restore taken while the mount runs sees every commit.
type Local struct {
	*FileReplica

	mu   sync.Mutex
	logs map[string][]logRecord // each database's log, read once
}

// OpenLocal returns a read-only view of the local store at dir.
func OpenLocal(dir string) *Local {
	return &Local{FileReplica: NewFileReplica(dir), logs: map[string][]logRecord{}}
}

// logged returns db's logged commits as they were at the first look: a
// commit that leaves the log later is a complete file by then.
func (l *Local) logged(db string) ([]logRecord, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if recs, ok := l.logs[db]; ok {
		return recs, nil
	}
	recs, _, err := readLog(filepath.Join(l.Root, LogPath(db)))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	l.logs[db] = recs
	return recs, nil
}

var _ Replica = (*Local)(nil)

// LTXFiles lists level files; level 0 also includes logged commits not yet
// written out. The log is read before the directory so that a commit written
// out and trimmed from the log in between is still seen.
func (l *Local) LTXFiles(ctx context.Context, db string, level int) ([]*ltx.FileInfo, error) {
	return l.LTXFilesAfter(ctx, db, level, 0)
}

// LTXFilesAfter is LTXFiles of the files with MinTXID > after.
func (l *Local) LTXFilesAfter(ctx context.Context, db string, level int, after ltx.TXID) ([]*ltx.FileInfo, error) {
	return l.LTXFilesBetween(ctx, db, level, after, ^ltx.TXID(0))
}

// LTXFilesBetween is LTXFiles of the files with after < MinTXID <= upTo.
func (l *Local) LTXFilesBetween(ctx context.Context, db string, level int, after, upTo ltx.TXID) ([]*ltx.FileInfo, error) {
	var recs []logRecord
	if level == 0 {
		all, err := l.logged(db)
		if err != nil {
			return nil, err
		}
		i := sort.Search(len(all), func(i int) bool { return all[i].min > after })
		j := sort.Search(len(all), func(j int) bool { return all[j].min > upTo })
		recs = all[i:max(i, j)]
	}
	infos, err := l.FileReplica.LTXFilesBetween(ctx, db, level, after, upTo)
	if err != nil || len(recs) == 0 {
		return infos, err
	}
	// A logged commit wins over its file, which may still be being written.
	logged := map[[2]ltx.TXID]bool{}
	for _, r := range recs {
		logged[[2]ltx.TXID{r.min, r.max}] = true
	}
	kept := infos[:0]
	for _, fi := range infos {
		if !logged[[2]ltx.TXID{fi.MinTXID, fi.MaxTXID}] {
			kept = append(kept, fi)
		}
	}
	infos = kept
	for _, r := range recs {
		var h ltx.Header
		h.UnmarshalBinary(r.data)
		infos = append(infos, &ltx.FileInfo{Level: 0, MinTXID: r.min, MaxTXID: r.max,
			Size: int64(len(r.data)), CreatedAt: time.UnixMilli(h.Timestamp).UTC()})
	}
	sort.Slice(infos, func(i, j int) bool {
		if infos[i].MinTXID != infos[j].MinTXID {
			return infos[i].MinTXID < infos[j].MinTXID
		}
		return infos[i].MaxTXID < infos[j].MaxTXID
	})
	return infos, nil
}

// OpenLTX opens a logged commit, or else a file of the layout. A commit
// leaves the log only once its file is complete and durable.
func (l *Local) OpenLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID) (io.ReadCloser, error) {
	return l.ReadLTXRange(ctx, db, level, minTXID, maxTXID, 0, -1)
}

// ReadLTXRange reads part of a logged commit, or else of a file of the layout.
func (l *Local) ReadLTXRange(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID, off, n int64) (io.ReadCloser, error) {
	if level == 0 {
		recs, err := l.logged(db)
		if err != nil {
			return nil, err
		}
		// Records ascend by TXID (readLog stops where they do not).
		i := sort.Search(len(recs), func(i int) bool { return recs[i].min >= minTXID })
		for _, r := range recs[i:] {
			if r.min != minTXID {
				break
			}
			if r.max == maxTXID {
				data := r.data[min(off, int64(len(r.data))):]
				if n >= 0 && n < int64(len(data)) {
					data = data[:n]
				}
				return io.NopCloser(bytes.NewReader(data)), nil
			}
		}
	}
	return l.FileReplica.ReadLTXRange(ctx, db, level, minTXID, maxTXID, off, n)
}
