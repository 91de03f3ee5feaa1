package ship

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/superfly/ltx"
	"golang.org/x/sys/unix"
)

// encodeLTX makes a small valid LTX file for txid with one page.
func encodeLTX(t *testing.T, txid ltx.TXID) []byte {
	t.Helper()
	hdr := ltx.Header{Version: ltx.Version, PageSize: 512, Commit: 1, MinTXID: txid, MaxTXID: txid, Timestamp: 1}
	if txid > 1 { // the state txid-1 left: its page 1
		hdr.PreApplyChecksum = ltx.ChecksumFlag | ltx.ChecksumPage(1, bytes.Repeat([]byte{byte(txid - 1)}, 512))
	}
	page := bytes.Repeat([]byte{byte(txid)}, 512)
	return encodeWith(t, hdr, page, ltx.ChecksumFlag|ltx.ChecksumPage(1, page))
}

func appendTX(t *testing.T, s *Store, txid ltx.TXID, durable bool) {
	t.Helper()
	data := encodeLTX(t, txid)
	err := s.Append("app.db", txid, txid, func(w io.Writer) error { _, err := w.Write(data); return err }, durable)
	if err != nil {
		t.Fatal(err)
	}
}

// listTXIDs returns the max TXIDs a local reader sees, checking each file reads back whole.
func listTXIDs(t *testing.T, dir string) []ltx.TXID {
	t.Helper()
	l := OpenLocal(dir)
	infos, err := l.LTXFiles(context.Background(), "app.db", 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []ltx.TXID
	for _, fi := range infos {
		rc, err := l.OpenLTX(context.Background(), "app.db", 0, fi.MinTXID, fi.MaxTXID)
		if err != nil {
			t.Fatal(err)
		}
		if err := ltx.NewDecoder(rc).Verify(); err != nil {
			t.Fatalf("txid %s: %v", fi.MaxTXID, err)
		}
		rc.Close()
		out = append(out, fi.MaxTXID)
	}
	return out
}

func wantTXIDs(t *testing.T, got []ltx.TXID, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("history has %d files, want %d: %v", len(got), n, got)
	}
	for i, x := range got {
		if x != ltx.TXID(i+1) {
			t.Fatalf("history %v is not 1..%d", got, n)
		}
	}
}

func TestStoreSeesLoggedCommitsAtOnce(t *testing.T) {
	dir := t.TempDir()
	s := OpenStore(dir, slog.Default())
	for txid := ltx.TXID(1); txid <= 50; txid++ {
		appendTX(t, s, txid, txid%10 == 0)
		// Visible the moment Append returns, written out or not.
		if got := listTXIDs(t, dir); len(got) != int(txid) {
			t.Fatalf("after append %d: reader sees %d commits", txid, len(got))
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// After Close every commit is a file of its own.
	fr := NewFileReplica(dir)
	infos, _ := fr.LTXFiles(context.Background(), "app.db", 0)
	if len(infos) != 50 {
		t.Fatalf("%d files after close, want 50", len(infos))
	}
	wantTXIDs(t, listTXIDs(t, dir), 50)
}

// TestStoreEmptiedLogShowsNothing: once a log is emptied, its old records,
// still in the file, are not history any more: a file removed later (by
// retention) must not come back through the log.
func TestStoreEmptiedLogShowsNothing(t *testing.T) {
	dir := t.TempDir()
	s := OpenStore(dir, slog.Default())
	for txid := ltx.TXID(1); txid <= 5; txid++ {
		appendTX(t, s, txid, false)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fr := NewFileReplica(dir)
	var gone []*ltx.FileInfo
	for txid := ltx.TXID(1); txid <= 4; txid++ {
		gone = append(gone, &ltx.FileInfo{MinTXID: txid, MaxTXID: txid})
	}
	if err := fr.DeleteLTX(context.Background(), "app.db", gone); err != nil {
		t.Fatal(err)
	}
	if got := listTXIDs(t, dir); len(got) != 1 || got[0] != 5 {
		t.Fatalf("after removing files 1-4 the store lists %v, want only 5", got)
	}
}

func TestStoreRecoverWritesOutTheLog(t *testing.T) {
	dir := t.TempDir()
	s := OpenStore(dir, slog.Default())
	for txid := ltx.TXID(1); txid <= 20; txid++ {
		appendTX(t, s, txid, false)
	}
	// Simulate a crash: files 15..20 never written out, 14 torn.
	s.mu.Lock()
	s.closed, s.closing = true, time.Now()
	s.mu.Unlock()
	<-s.done
	for txid := ltx.TXID(14); txid <= 20; txid++ {
		os.Remove(filepath.Join(dir, LTXPath("app.db", 0, txid, txid)))
	}
	os.WriteFile(filepath.Join(dir, LTXPath("app.db", 0, 14, 14)), []byte("torn"), 0o644)
	// 13 was written out but lost its data to a power cut: right size, zeros.
	p13 := filepath.Join(dir, LTXPath("app.db", 0, 13, 13))
	if fi, err := os.Stat(p13); err != nil {
		t.Fatal(err)
	} else {
		os.WriteFile(p13, make([]byte, fi.Size()), 0o644)
	}
	// A torn record at the end of the log was never acknowledged.
	f, _ := os.OpenFile(filepath.Join(dir, LogPath("app.db")), os.O_WRONLY, 0)
	logEnd := int64(0)
	if recs, end, err := readLog(f.Name()); err != nil || len(recs) != 20 {
		t.Fatalf("log has %d records, %v", len(recs), err)
	} else {
		logEnd = end
	}
	torn := encodeLTX(t, 21)
	f.WriteAt(append([]byte{'s', 'q', 'l', 'r', 0, 0, 2, 0}, torn[:100]...), logEnd)
	f.Close()

	s2 := OpenStore(dir, slog.Default())
	if err := s2.Recover("app.db"); err != nil {
		t.Fatal(err)
	}
	wantTXIDs(t, listTXIDs(t, dir), 20)
	// The log starts over: new commits after old records are read, the old ones are not repeated.
	appendTX(t, s2, 21, true)
	appendTX(t, s2, 22, false)
	wantTXIDs(t, listTXIDs(t, dir), 22)
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	checkStoreFiles(t, dir, 22)
}

// checkStoreFiles checks that the store's level-0 files, read as files and
// not through the log, are commits 1..n, each whole.
func checkStoreFiles(t *testing.T, dir string, n int) {
	t.Helper()
	fr := NewFileReplica(dir)
	infos, _ := fr.LTXFiles(context.Background(), "app.db", 0)
	if len(infos) != n {
		t.Fatalf("%d files, want %d", len(infos), n)
	}
	for _, fi := range infos {
		rc, err := fr.OpenLTX(context.Background(), "app.db", 0, fi.MinTXID, fi.MaxTXID)
		if err != nil {
			t.Fatal(err)
		}
		err = ltx.NewDecoder(rc).Verify()
		rc.Close()
		if err != nil {
			t.Fatalf("file of txid %s: %v", fi.MaxTXID, err)
		}
	}
}

// A stop does not wait for a large backlog to be written out: what is left
// stays in the log, durable, and the next Recover writes it out.
func TestStoreCloseLeavesBacklogInLog(t *testing.T) {
	defer func(d time.Duration) { closeWriteOut = d }(closeWriteOut)
	closeWriteOut = 0
	dir := t.TempDir()
	s := OpenStore(dir, slog.Default())
	for txid := ltx.TXID(1); txid <= 200; txid++ {
		appendTX(t, s, txid, false)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	recs, _, err := readLog(filepath.Join(dir, LogPath("app.db")))
	if err != nil || len(recs) == 0 {
		t.Fatalf("log after close: %d records, %v; want the backlog kept", len(recs), err)
	}
	wantTXIDs(t, listTXIDs(t, dir), 200)
	s2 := OpenStore(dir, slog.Default())
	if err := s2.Recover("app.db"); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	checkStoreFiles(t, dir, 200)
}

func TestStoreLargeCommitBypassesLog(t *testing.T) {
	dir := t.TempDir()
	s := OpenStore(dir, slog.Default())
	defer s.Close()
	appendTX(t, s, 1, false)
	big := make([]byte, logRecordMax+1)
	err := s.Append("app.db", 2, 2, func(w io.Writer) error { _, err := w.Write(big); return err }, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, LTXPath("app.db", 0, 2, 2))); err != nil {
		t.Fatalf("large commit not written as a file at once: %v", err)
	}
	appendTX(t, s, 3, false)
	l := OpenLocal(dir)
	infos, err := l.LTXFiles(context.Background(), "app.db", 0)
	if err != nil || len(infos) != 3 {
		t.Fatalf("reader sees %d files (%v), want 3", len(infos), err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, LTXPath("app.db", 0, 3, 3))); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatal("logged commit 3 never written out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStoreReadCommits: a run of commits reads back byte for byte whether
// each is still in the capture log, written out, or a large commit that
// bypassed the log, and the read stops once the bytes asked for are there.
func TestStoreReadCommits(t *testing.T) {
	dir := t.TempDir()
	s := OpenStore(dir, slog.Default())
	defer s.Close()
	want := map[ltx.TXID][]byte{}
	for txid := ltx.TXID(1); txid <= 5; txid++ {
		appendTX(t, s, txid, false)
		want[txid] = encodeLTX(t, txid)
	}
	deadline := time.Now().Add(5 * time.Second)
	for { // written out once commits pause
		if _, err := os.Stat(filepath.Join(dir, LTXPath("app.db", 0, 5, 5))); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatal("logged commit 5 never written out")
		}
		time.Sleep(10 * time.Millisecond)
	}
	want[6] = bytes.Repeat([]byte{6}, logRecordMax+1)
	if err := s.Append("app.db", 6, 6, func(w io.Writer) error { _, err := w.Write(want[6]); return err }, false); err != nil {
		t.Fatal(err)
	}
	for txid := ltx.TXID(7); txid <= 40; txid++ {
		appendTX(t, s, txid, false)
		want[txid] = encodeLTX(t, txid)
	}
	got, sealed, err := s.ReadCommits("app.db", 2, 40, 1<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 39 || len(sealed) != 39 {
		t.Fatalf("read %d commits (%d sealed flags) from txid 2 to 40, want 39", len(got), len(sealed))
	}
	if sealed[6-2] {
		t.Fatal("txid 6, a large commit written as a file, reads as sealed by a log record")
	}
	for i, data := range got {
		if txid := ltx.TXID(i + 2); !bytes.Equal(data, want[txid]) {
			t.Fatalf("txid %s reads back as %d bytes, not the %d stored", txid, len(data), len(want[txid]))
		}
	}
	one := len(want[7])
	got, _, err = s.ReadCommits("app.db", 7, 40, 3*one, nil)
	if err != nil || len(got) != 3 || !bytes.Equal(got[2], want[9]) {
		t.Fatalf("read of 3 commits' bytes from txid 7: %d commits, %v; want 7-9", len(got), err)
	}
	if _, _, err := s.ReadCommits("app.db", 39, 41, 1<<30, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read past the last commit: %v, want ErrNotFound", err)
	}
}

// unstartedStore is a Store whose commits stay in the capture log: its
// writer goroutine is not running, so nothing is written out or trimmed.
func unstartedStore(t *testing.T) *Store {
	t.Helper()
	s := &Store{FileReplica: NewFileReplica(t.TempDir()), log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		logs: map[string]*captureLog{}, wake: make(chan struct{}, 1), done: make(chan struct{})}
	t.Cleanup(func() {
		for _, l := range s.logs {
			unix.Close(l.fd)
			if l.tailMapped {
				unix.Munmap(l.tail)
			}
		}
	})
	return s
}

// TestStoreLogRecordChecked: a commit whose bytes changed in the capture
// log after it was stored is refused by ReadLTX and ReadCommits (the
// record's CRC-64), which is what lets a backlog merge skip decoding the
// pages a later commit overwrites.
func TestStoreLogRecordChecked(t *testing.T) {
	s := unstartedStore(t)
	for txid := ltx.TXID(1); txid <= 5; txid++ {
		appendTX(t, s, txid, false)
	}
	if got, sealed, err := s.ReadCommits("app.db", 1, 5, 1<<30, nil); err != nil || len(got) != 5 || !sealed[0] || !sealed[4] {
		t.Fatalf("read 1-5 from the log: %d commits, sealed %v, %v; want 5, all sealed", len(got), sealed, err)
	}
	l := s.logs["app.db"]
	r := l.queue[2] // txid 3
	last := encodeLTX(t, 3)
	at := r.off + int64(ltx.HeaderSize) + 10 // inside page 1's block
	b := []byte{last[ltx.HeaderSize+10] ^ 0x01}
	if _, err := unix.Pwrite(l.fd, b, at); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ReadCommits("app.db", 1, 5, 1<<30, nil); !errors.Is(err, ltx.ErrChecksumMismatch) {
		t.Fatalf("ReadCommits over a changed record: %v, want a checksum mismatch", err)
	}
	if _, err := s.ReadLTX("app.db", 3, 3); !errors.Is(err, ltx.ErrChecksumMismatch) {
		t.Fatalf("ReadLTX of a changed record: %v, want a checksum mismatch", err)
	}
	if _, _, err := mergeLocal(context.Background(), s, "app.db", 2, 5, nil); err == nil {
		t.Fatal("merged a window whose capture log record changed")
	}
	if data, err := s.ReadLTX("app.db", 4, 4); err != nil || !bytes.Equal(data, encodeLTX(t, 4)) {
		t.Fatalf("ReadLTX of an intact record: %v", err)
	}
}

// TestStoreLogTail: commits read back byte for byte whether the capture
// log's in-memory tail still holds them or they are read from the log file
// (older than the tail), across the tail wrapping around and the log being
// emptied and reused; what the tail holds is read from memory (the file
// under it may change), the rest is checked against the records' CRCs.
func TestStoreLogTail(t *testing.T) {
	defer func(n int) { tailSize = n }(tailSize)
	tailSize = 3000
	s := unstartedStore(t)
	one := len(encodeLTX(t, 1)) + recordOverhead
	if 3000/one < 8 || 3000/one > 30 {
		t.Fatalf("records of %d bytes: the tail holds %d, want 8-30", one, 3000/one)
	}
	scratch := new([]byte) // reused by every read, as the uploader does
	read := func(lo, hi ltx.TXID) error {
		t.Helper()
		got, sealed, err := s.ReadCommits("app.db", lo, hi, 1<<30, scratch)
		if err != nil {
			return err
		}
		for i, data := range got {
			if txid := lo + ltx.TXID(i); !bytes.Equal(data, encodeLTX(t, txid)) || !sealed[i] {
				t.Fatalf("txid %s reads back as %d bytes (sealed %v), not the %d stored", txid, len(data), sealed[i], len(encodeLTX(t, txid)))
			}
		}
		if len(got) != int(hi-lo+1) {
			t.Fatalf("read %d commits of %s-%s", len(got), lo, hi)
		}
		return nil
	}
	for txid := ltx.TXID(1); txid <= 5; txid++ {
		appendTX(t, s, txid, false)
	}
	if err := read(1, 5); err != nil { // from the file; the tail starts here
		t.Fatal(err)
	}
	for txid := ltx.TXID(6); txid <= 60; txid++ {
		appendTX(t, s, txid, false)
		if txid%7 == 0 {
			if err := read(max(1, txid-5), txid); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, w := range [][2]ltx.TXID{{1, 60}, {50, 60}, {60, 60}, {3, 20}} {
		if err := read(w[0], w[1]); err != nil {
			t.Fatalf("%v: %v", w, err)
		}
	}
	// Overwrite the whole log file: the newest commits still read back
	// right (from the tail), older ones fail their CRC.
	l := s.logs["app.db"]
	junk := bytes.Repeat([]byte{0x5a}, int(l.size))
	if _, err := unix.Pwrite(l.fd, junk, 0); err != nil {
		t.Fatal(err)
	}
	if err := read(57, 60); err != nil {
		t.Fatalf("the tail's commits: %v", err)
	}
	if err := read(1, 5); !errors.Is(err, ltx.ErrChecksumMismatch) {
		t.Fatalf("commits older than the tail, log overwritten: %v, want a checksum mismatch", err)
	}
	// Empty the log (as after a burst, once written out) and reuse it.
	l.queue = nil
	s.backlog = 0
	s.trim(true)
	if l.size != 0 {
		t.Fatalf("log not emptied: size %d", l.size)
	}
	for txid := ltx.TXID(61); txid <= 70; txid++ {
		appendTX(t, s, txid, false)
	}
	if err := read(61, 70); err != nil {
		t.Fatal(err)
	}
	if data, err := s.ReadLTX("app.db", 65, 65); err != nil || !bytes.Equal(data, encodeLTX(t, 65)) {
		t.Fatalf("ReadLTX of txid 65 after the log was reused: %v", err)
	}
}
