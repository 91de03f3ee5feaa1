package ship_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/superfly/ltx"

	"github.com/sqlfs/sqlfs/restore"
	"github.com/sqlfs/sqlfs/ship"
)

// pageHistory writes level-0 LTX files into a FileReplica as sqlfs's
// capture does: real checksums, and a commit that grows the database
// carries every page from the old end to the new end (zeros where nothing
// was written). carry=false leaves those pages out, as a foreign writer
// might.
type pageHistory struct {
	t      *testing.T
	rep    *ship.FileReplica
	db     string
	txid   ltx.TXID
	state  []byte
	sum    ltx.Checksum
	states map[ltx.TXID][]byte
	carry  bool
	idx    *ship.Index // the leveler's view, told of each commit as the mount does
}

const testPageSize = 512

func newPageHistory(t *testing.T) *pageHistory {
	return &pageHistory{t: t, rep: ship.NewFileReplica(t.TempDir()), db: "x.db", states: map[ltx.TXID][]byte{}, carry: true}
}

func fill(b byte) []byte { return bytes.Repeat([]byte{b}, testPageSize) }

// commit sets the database to size pages and writes pages.
func (h *pageHistory) commit(size uint32, pages map[uint32][]byte) ltx.TXID {
	h.t.Helper()
	h.txid++
	old := uint32(len(h.state) / testPageSize)
	next := make([]byte, int(size)*testPageSize)
	copy(next, h.state)
	for p, b := range pages {
		copy(next[int(p-1)*testPageSize:], b)
	}
	write := map[uint32]bool{}
	for p := range pages {
		write[p] = true
	}
	if h.carry {
		for p := old + 1; p <= size; p++ {
			write[p] = true
		}
	}
	post := ltx.ChecksumFlag
	for p := uint32(1); p <= size; p++ {
		post = ltx.ChecksumFlag | (post ^ ltx.ChecksumPage(p, next[int(p-1)*testPageSize:int(p)*testPageSize]))
	}
	var buf bytes.Buffer
	enc, err := ltx.NewEncoder(&buf)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := enc.EncodeHeader(ltx.Header{Version: ltx.Version, PageSize: testPageSize, Commit: size,
		MinTXID: h.txid, MaxTXID: h.txid, PreApplyChecksum: h.sum,
		Timestamp: time.Date(2024, 1, 1, 0, 0, int(h.txid), 0, time.UTC).UnixMilli()}); err != nil {
		h.t.Fatal(err)
	}
	for p := uint32(1); p <= size; p++ {
		if write[p] {
			if err := enc.EncodePage(ltx.PageHeader{Pgno: p}, next[int(p-1)*testPageSize:int(p)*testPageSize]); err != nil {
				h.t.Fatal(err)
			}
		}
	}
	enc.SetPostApplyChecksum(post)
	if err := enc.Close(); err != nil {
		h.t.Fatal(err)
	}
	if err := h.rep.WriteLTX(h.db, 0, h.txid, h.txid, buf.Bytes(), false); err != nil {
		h.t.Fatal(err)
	}
	if h.idx != nil {
		h.idx.Observe(h.db, &ltx.FileInfo{Level: 0, MinTXID: h.txid, MaxTXID: h.txid, Size: int64(buf.Len()), CreatedAt: time.Now().UTC()})
	}
	h.state, h.sum = next, post
	h.states[h.txid] = bytes.Clone(next)
	return h.txid
}

// leveler returns a Leveler over h's replica with one level, logging to log.
func (h *pageHistory) leveler(log io.Writer) *ship.Leveler {
	h.idx = ship.NewIndex(h.rep)
	return ship.NewLeveler(ship.LevelerConfig{
		Target: h.idx,
		Levels: ship.Levels{Intervals: []time.Duration{time.Second}, Snapshot: time.Hour, RetentionL0: time.Second, Retention: time.Hour},
		Plan:   restore.Plan,
		Log:    slog.New(slog.NewTextHandler(log, nil)),
	})
}

// restoreBytes restores txid from r and returns the database bytes.
func restoreBytes(t *testing.T, r ship.Replica, db string, txid ltx.TXID) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.db")
	if _, err := restore.Restore(context.Background(), r, db, restore.Options{Output: out, TXID: txid}); err != nil {
		t.Fatalf("restore txid %s: %v", txid, err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// onlyLevel copies the files of one level of h's replica into a new one.
func onlyLevels(t *testing.T, h *pageHistory, levels ...int) *ship.FileReplica {
	t.Helper()
	r := ship.NewFileReplica(t.TempDir())
	for _, level := range levels {
		files, err := h.rep.LTXFiles(context.Background(), h.db, level)
		if err != nil {
			t.Fatal(err)
		}
		for _, fi := range files {
			b, err := os.ReadFile(filepath.Join(h.rep.Root, ship.LTXPath(h.db, level, fi.MinTXID, fi.MaxTXID)))
			if err != nil {
				t.Fatal(err)
			}
			if err := r.WriteLTX(h.db, level, fi.MinTXID, fi.MaxTXID, b, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	return r
}

// shrinkThenGrow writes a 10-page database, then one window that shrinks it
// to 4 pages, grows it to 8 (writing 7 and 8 only), and writes page 1.
func shrinkThenGrow(h *pageHistory, lev *ship.Leveler) {
	h.t.Helper()
	all := map[uint32][]byte{}
	for p := uint32(1); p <= 10; p++ {
		all[p] = fill(byte(p))
	}
	h.commit(10, all)
	// The first window holds the 10-page state alone.
	if err := lev.Pass(context.Background(), h.db, time.Now(), []bool{true}, false); err != nil {
		h.t.Fatal(err)
	}
	h.commit(4, map[uint32][]byte{2: fill(0xaa)})
	h.commit(8, map[uint32][]byte{7: fill(0xbb), 8: fill(0xcc)})
	h.commit(8, map[uint32][]byte{1: fill(0xdd)})
}

func TestCompactShrinkThenGrow(t *testing.T) {
	h := newPageHistory(t)
	var log bytes.Buffer
	lev := h.leveler(&log)
	shrinkThenGrow(h, lev)
	if err := lev.Pass(context.Background(), h.db, time.Now(), []bool{true}, false); err != nil {
		t.Fatal(err)
	}
	l1, err := h.rep.LTXFiles(context.Background(), h.db, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(l1) != 2 || l1[1].MinTXID != 2 || l1[1].MaxTXID != 4 {
		t.Fatalf("level 1 holds %v, want files 1-1 and 2-4", l1)
	}
	want := h.states[4]
	if got := restoreBytes(t, onlyLevels(t, h, 0), h.db, 4); !bytes.Equal(got, want) {
		t.Fatal("restore from level 0 differs from the database")
	}
	if got := restoreBytes(t, onlyLevels(t, h, 1), h.db, 4); !bytes.Equal(got, want) {
		t.Fatal("restore from the compacted file differs from restore from level 0")
	}
	// A snapshot of that state (checked page by page before it is put)
	// restores it alone.
	if err := lev.Pass(context.Background(), h.db, time.Now(), []bool{false}, true); err != nil {
		t.Fatal(err)
	}
	if got := restoreBytes(t, onlyLevels(t, h, ship.SnapshotLevel), h.db, 4); !bytes.Equal(got, want) {
		t.Fatal("restore from the snapshot differs from restore from level 0")
	}
	// Pages 5 and 6 were cut by the shrink and are zeros again.
	if !bytes.Equal(want[4*testPageSize:6*testPageSize], make([]byte, 2*testPageSize)) {
		t.Fatal("model: pages 5 and 6 are not zeros")
	}
}

// A history whose growth does not carry the pages between the old and the
// new end cannot be compacted exactly as one window: the window is split
// where the database shrank, compaction goes on past it, and every TXID at
// a boundary restores exactly from the level files alone.
func TestCompactSplitsUncarriedGrowth(t *testing.T) {
	h := newPageHistory(t)
	var log bytes.Buffer
	lev := h.leveler(&log)
	shrinkThenGrow(h, lev) // txid 1 with carry; the window without
	h.carry = false
	h.commit(4, map[uint32][]byte{2: fill(0x11)})
	h.commit(9, map[uint32][]byte{9: fill(0x22)}) // 5..8 stay zeros, not written
	if err := lev.Pass(context.Background(), h.db, time.Now().Add(time.Hour), []bool{true}, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "compaction window split") || !strings.Contains(log.String(), "is not written again") {
		t.Fatalf("log does not say why the window was split:\n%s", log.String())
	}
	l1, _ := h.rep.LTXFiles(context.Background(), h.db, 1)
	var got []string
	for _, fi := range l1 {
		got = append(got, fmt.Sprintf("%d-%d", fi.MinTXID, fi.MaxTXID))
	}
	if strings.Join(got, " ") != "1-1 2-5 6-6" {
		t.Fatalf("level 1 holds %v, want 1-1 2-5 6-6", got)
	}
	for _, txid := range []ltx.TXID{5, 6} {
		if got := restoreBytes(t, onlyLevels(t, h, 1), h.db, txid); !bytes.Equal(got, h.states[txid]) {
			t.Fatalf("txid %s restores differently from level 1", txid)
		}
		if got := restoreBytes(t, h.rep, h.db, txid); !bytes.Equal(got, h.states[txid]) {
			t.Fatalf("txid %s restores differently after retention", txid)
		}
	}
}

// Retention cuts level 0 only up to where verified level files reach, keeps
// the newest level-0 file, and a TXID inside the compacted range names the
// TXIDs that can be restored instead.
func TestRetentionKeepsWhatLevelsDoNotCover(t *testing.T) {
	ctx := context.Background()
	h := newPageHistory(t)
	var log bytes.Buffer
	lev := h.leveler(&log)
	for i := 0; i < 6; i++ {
		h.commit(uint32(2+i), map[uint32][]byte{1: fill(byte(i))})
	}
	if err := lev.Pass(ctx, h.db, time.Now(), []bool{true}, false); err != nil { // level 1: 1-6
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		h.commit(8, map[uint32][]byte{2: fill(byte(0x40 + i))}) // 7..9, not compacted
	}
	if err := lev.Pass(ctx, h.db, time.Now().Add(time.Hour), []bool{false}, false); err != nil {
		t.Fatal(err)
	}
	l0, _ := h.rep.LTXFiles(ctx, h.db, 0)
	var got []ltx.TXID
	for _, fi := range l0 {
		got = append(got, fi.MaxTXID)
	}
	if len(got) != 3 || got[0] != 7 || got[2] != 9 {
		t.Fatalf("level 0 after retention holds %v, want 7, 8, 9", got)
	}
	for _, txid := range []ltx.TXID{6, 7, 9} {
		if b := restoreBytes(t, h.rep, h.db, txid); !bytes.Equal(b, h.states[txid]) {
			t.Fatalf("txid %s does not restore exactly", txid)
		}
	}
	_, err := restore.Plan(ctx, h.rep, h.db, 4)
	if !errors.Is(err, restore.ErrTXIDNotFound) || !strings.Contains(err.Error(), "(restorable here: txid 0000000000000006)") {
		t.Fatalf("plan of txid 4 inside level 1's 1-6: %v", err)
	}

	// By time: txid 7's commit time is in level 0; txid 5's is only in
	// level 1's file ending at 6, which is after it, so the answer is
	// before history; a time after txid 6 but before 7 is txid 6.
	at := func(txid ltx.TXID) time.Time { return time.Date(2024, 1, 1, 0, 0, int(txid), 0, time.UTC) }
	if txid, err := restore.TXIDAt(ctx, h.rep, h.db, at(7)); err != nil || txid != 7 {
		t.Fatalf("TXIDAt(time of 7) = %s, %v", txid, err)
	}
	if txid, err := restore.TXIDAt(ctx, h.rep, h.db, at(6).Add(500*time.Millisecond)); err != nil || txid != 6 {
		t.Fatalf("TXIDAt(between 6 and 7) = %s, %v; level 0 starts at 7", txid, err)
	}
	if _, err := restore.TXIDAt(ctx, h.rep, h.db, at(5)); !errors.Is(err, restore.ErrBeforeHistory) ||
		!strings.Contains(err.Error(), "history starts at txid 0000000000000006") {
		t.Fatalf("TXIDAt(time of 5) = %v", err)
	}
}

// A level file retention cannot verify (here: a corrupt one left in the
// replica) does not replace level 0.
func TestRetentionIgnoresUnverifiedLevelFiles(t *testing.T) {
	ctx := context.Background()
	h := newPageHistory(t)
	for i := 0; i < 4; i++ {
		h.commit(2, map[uint32][]byte{1: fill(byte(i))})
	}
	good := newPageHistory(t)
	good.rep = ship.NewFileReplica(t.TempDir())
	for i := 0; i < 4; i++ {
		good.commit(2, map[uint32][]byte{1: fill(byte(i))})
	}
	if err := good.leveler(io.Discard).Pass(ctx, good.db, time.Now(), []bool{true}, false); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(good.rep.Root, ship.LTXPath(good.db, 1, 1, 4)))
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff // one flipped byte in the page block
	if err := h.rep.WriteLTX(h.db, 1, 1, 4, b, false); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	if err := h.leveler(&log).Pass(ctx, h.db, time.Now().Add(time.Hour), []bool{false}, false); err != nil {
		t.Fatal(err)
	}
	if l0, _ := h.rep.LTXFiles(ctx, h.db, 0); len(l0) != 4 {
		t.Fatalf("retention left %d of 4 level-0 files beside a corrupt level-1 file", len(l0))
	}
	if !strings.Contains(log.String(), "failed verification") {
		t.Fatalf("log does not name the corrupt file:\n%s", log.String())
	}
	if got := restoreBytes(t, onlyLevels(t, h, 0), h.db, 3); !bytes.Equal(got, h.states[3]) {
		t.Fatal("txid 3 does not restore from level 0")
	}
}

// A compaction that fails (here: an input removed from the replica behind
// the leveler's back) is retried with backoff and logged, with the replica
// listed again, and compaction goes on with what is there.
func TestLevelerRetriesWithBackoff(t *testing.T) {
	ctx := context.Background()
	h := newPageHistory(t)
	var log ship.SyncLog
	h.idx = ship.NewIndex(h.rep)
	lev := ship.NewLeveler(ship.LevelerConfig{
		Target: h.idx,
		Levels: ship.Levels{Intervals: []time.Duration{100 * time.Millisecond}, Snapshot: time.Hour, RetentionL0: time.Hour, Retention: 2 * time.Hour},
		Plan:   restore.Plan,
		Log:    slog.New(slog.NewTextHandler(&log, nil)),
	})
	for i := 0; i < 6; i++ {
		h.commit(2, map[uint32][]byte{1: fill(byte(i))})
	}
	// The leveler lists the replica: its memory now holds all six.
	if err := lev.Pass(ctx, h.db, time.Now(), []bool{false}, false); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(h.rep.Root, ship.LTXPath(h.db, 0, 6, 6))); err != nil {
		t.Fatal(err)
	}
	lev.Add(h.db)
	lev.Start()
	defer lev.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The pass that writes level 1 logs its recovery just after the
		// file is in place: wait for both.
		l1, _ := h.rep.LTXFiles(ctx, h.db, 1)
		if len(l1) == 1 && l1[0].MinTXID == 1 && l1[0].MaxTXID == 5 && strings.Contains(log.String(), "compaction and retention work again") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("level 1 holds %v, want 1-5; log:\n%s", l1, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	out := log.String()
	if !strings.Contains(out, "compaction or retention failed; retrying") || !strings.Contains(out, "retry_in=100ms") ||
		!strings.Contains(out, "compaction and retention work again") {
		t.Fatalf("log does not show the retry:\n%s", out)
	}
	if got := restoreBytes(t, onlyLevels(t, h, 1), h.db, 5); !bytes.Equal(got, h.states[5]) {
		t.Fatal("txid 5 restores differently from level 1")
	}
}

// Once a database's history is compacted and snapshotted, passes with every
// level due and a snapshot due make no request: the listing is in memory,
// and an unchanged database gets no second snapshot.
func TestIdlePassMakesNoRequests(t *testing.T) {
	ctx := context.Background()
	h := newPageHistory(t)
	counted := ship.NewCounted(h.rep)
	h.idx = ship.NewIndex(counted)
	lev := ship.NewLeveler(ship.LevelerConfig{
		Target: h.idx,
		Levels: ship.Levels{Intervals: []time.Duration{time.Second, 2 * time.Second}, Snapshot: time.Hour, RetentionL0: time.Hour, Retention: 2 * time.Hour},
		Plan:   restore.Plan,
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	for i := 0; i < 5; i++ {
		h.commit(2, map[uint32][]byte{1: fill(byte(i))})
	}
	if err := lev.Pass(ctx, h.db, time.Now(), []bool{true, true}, true); err != nil {
		t.Fatal(err)
	}
	before := counted.Counts()
	for i := 1; i <= 3; i++ {
		if err := lev.Pass(ctx, h.db, time.Now().Add(time.Duration(i)*time.Minute), []bool{true, true}, true); err != nil {
			t.Fatal(err)
		}
	}
	if after := counted.Counts(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("idle passes made requests: %v, then %v", before, after)
	}
	if snaps, _ := h.rep.LTXFiles(ctx, h.db, ship.SnapshotLevel); len(snaps) != 1 {
		t.Fatalf("%d snapshots of an unchanged database, want 1", len(snaps))
	}
}
