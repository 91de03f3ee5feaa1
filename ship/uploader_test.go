package ship

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/superfly/ltx"
)

// TestUploaderMergesPastBacklog: commits that piled up past MaxBacklog while
// nothing shipped go up as one file whose pages are the newest and whose
// checksums chain; a later start resumes after it, and new commits go up
// one file each again.
func TestUploaderMergesPastBacklog(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store := OpenStore(t.TempDir(), log)
	defer store.Close()
	replica := NewFileReplica(t.TempDir())
	u := NewUploader(store, replica, log, Options{MaxBacklog: 5})
	if err := u.Start(ctx, "app.db", 0); err != nil {
		t.Fatal(err)
	}
	store.OnAppend = u.Notify
	u.Pause()
	for txid := ltx.TXID(1); txid <= 30; txid++ {
		appendTX(t, store, txid, false)
	}
	u.Resume()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := u.WaitFor(wctx, "app.db", 30); err != nil {
		t.Fatal(err)
	}
	infos, err := replica.LTXFiles(ctx, "app.db", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 || infos[0].MinTXID != 1 || infos[0].MaxTXID != 30 {
		t.Fatalf("replica holds %v, want one merged file 1-30", rangesOf(infos))
	}
	rc, err := replica.OpenLTX(ctx, "app.db", 0, 1, 30)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	dec := ltx.NewDecoder(strings.NewReader(string(data)))
	if err := dec.DecodeHeader(); err != nil {
		t.Fatal(err)
	}
	var ph ltx.PageHeader
	page := make([]byte, 512)
	if err := dec.DecodePage(&ph, page); err != nil || ph.Pgno != 1 || page[0] != 30 {
		t.Fatalf("merged page 1: %v, pgno %d, byte %d; want txid 30's page", err, ph.Pgno, page[0])
	}
	last, _ := store.ReadLTX("app.db", 30, 30)
	if postApply(data) != postApply(last) {
		t.Fatal("merged file does not end in txid 30's state")
	}
	st := u.Stats()
	if st.PUTs != 1 || st.MergedPUTs != 1 || st.MergedCommits != 30 {
		t.Fatalf("stats %+v, want one merged PUT of 30 commits", st)
	}
	if d := st.DBs["app.db"]; d.ReplicaTXID != 30 || d.Backlog != 0 || d.Lag != 0 {
		t.Fatalf("db stats %+v, want caught up at 30", d)
	}
	u.Close(time.Second)

	// A new uploader resumes after the merged file.
	u = NewUploader(store, replica, log, Options{MaxBacklog: 5})
	defer u.Close(time.Second)
	if err := u.Start(ctx, "app.db", 30); err != nil {
		t.Fatal(err)
	}
	if u.Pos("app.db") != 30 {
		t.Fatalf("resumed at %s, want 30", u.Pos("app.db"))
	}
	store.OnAppend = u.Notify
	appendTX(t, store, 31, false)
	if err := u.WaitFor(wctx, "app.db", 31); err != nil {
		t.Fatal(err)
	}
	infos, _ = replica.LTXFiles(ctx, "app.db", 0)
	if got := rangesOf(infos); got != "1-30 31-31" {
		t.Fatalf("replica holds %s, want 1-30 31-31", got)
	}
}

func rangesOf(infos []*ltx.FileInfo) string {
	var out []string
	for _, fi := range infos {
		out = append(out, fmt.Sprintf("%d-%d", fi.MinTXID, fi.MaxTXID))
	}
	return strings.Join(out, " ")
}

// TestTokenBucket: one PUT at once, then one per 1/rate.
func TestTokenBucket(t *testing.T) {
	now := time.Unix(1000, 0)
	b := tokenBucket{rate: 10, tokens: 1}
	if at := b.take(now); !at.IsZero() {
		t.Fatalf("first take waits until %v", at)
	}
	at := b.take(now)
	if want := now.Add(100 * time.Millisecond); !at.Equal(want) {
		t.Fatalf("second take at once: wait until %v, want %v", at, want)
	}
	if at := b.take(now.Add(100 * time.Millisecond)); !at.IsZero() {
		t.Fatalf("take after 100 ms waits until %v", at)
	}
	if at := (&tokenBucket{}).take(now); !at.IsZero() {
		t.Fatal("a zero rate limits")
	}
}

func TestLeaseFile(t *testing.T) { testLease(t, NewFileReplica(t.TempDir())) }

func TestLeaseS3(t *testing.T) {
	endpoint, bucket := startS3(t)
	r, err := OpenReplica(context.Background(), s3URL(endpoint, bucket, "leased"))
	if err != nil {
		t.Fatal(err)
	}
	testLease(t, r)
}

// testLease: a replica's lease refuses another live owner with a message
// naming the holder, is taken back by its own owner and taken over once
// stale, and is gone after Release. Databases ignores it.
func testLease(t *testing.T, r ReplicaClient) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a := LeaseHolder{Owner: "a", Host: "hosta", PID: 1, DataDir: "/data/a"}
	b := LeaseHolder{Owner: "b", Host: "hostb", PID: 2, DataDir: "/data/b"}
	la, err := LeaseTiming{}.Acquire(ctx, r, a, log)
	if err != nil {
		t.Fatal(err)
	}
	_, err = LeaseTiming{}.Acquire(ctx, r, b, log)
	var le *LeaseError
	if !errors.As(err, &le) || !strings.Contains(err.Error(), "is in use by sqlfs on hosta (pid 1, data dir /data/a) since ") {
		t.Fatalf("second owner: %v", err)
	}
	if dbs, err := r.Databases(ctx); err != nil || len(dbs) != 0 {
		t.Fatalf("Databases with only a lease: %v, %v", dbs, err)
	}
	// The same owner (a restart after kill -9) takes it back.
	la2, err := LeaseTiming{}.Acquire(ctx, r, a, log)
	if err != nil {
		t.Fatalf("same owner: %v", err)
	}
	// A lease whose heartbeat is older than LeaseTTL is taken over.
	data, tag, err := r.ReadLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var h LeaseHolder
	json.Unmarshal(data, &h)
	h.Heartbeat = time.Now().Add(-LeaseTTL - time.Second)
	stale, _ := json.Marshal(h)
	if _, err := r.WriteLease(ctx, stale, tag); err != nil {
		t.Fatal(err)
	}
	lb, err := LeaseTiming{}.Acquire(ctx, r, b, log)
	if err != nil {
		t.Fatalf("stale lease: %v", err)
	}
	// Releasing a lease someone else holds leaves theirs alone.
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := la2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if data, _, err := r.ReadLease(ctx); err != nil || !strings.Contains(string(data), `"owner":"b"`) {
		t.Fatalf("b's lease after a's release: %s, %v", data, err)
	}
	if err := lb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.ReadLease(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lease still there after release: %v", err)
	}
}

// startUploader ships app.db from a new store to a new file replica; all
// three are closed when the test ends.
func startUploader(t *testing.T, opt Options) (*Store, *FileReplica, *Uploader) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store := OpenStore(t.TempDir(), log)
	t.Cleanup(func() { store.Close() })
	replica := NewFileReplica(t.TempDir())
	u := NewUploader(store, replica, log, opt)
	t.Cleanup(func() { u.Close(time.Second) })
	if err := u.Start(context.Background(), "app.db", 0); err != nil {
		t.Fatal(err)
	}
	store.OnAppend = u.Notify
	return store, replica, u
}

// TestUploaderPutRateShipsTheLast: under -max-put-rate a commit that finds
// no PUT allowed ships once one is, even with nothing after it.
func TestUploaderPutRateShipsTheLast(t *testing.T) {
	ctx := context.Background()
	store, _, u := startUploader(t, Options{MaxPutRate: 5})
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	appendTX(t, store, 1, false)
	if err := u.WaitFor(wctx, "app.db", 1); err != nil {
		t.Fatal(err)
	}
	appendTX(t, store, 2, false) // within 200 ms of the first PUT
	if err := u.WaitFor(wctx, "app.db", 2); err != nil {
		t.Fatal(err)
	}
}

// slowListing is a file replica whose listings take a while, as a remote
// replica's may (fault injection: a file replica answers at once).
type slowListing struct{ *FileReplica }

func (r slowListing) LTXFiles(ctx context.Context, db string, level int) ([]*ltx.FileInfo, error) {
	time.Sleep(300 * time.Millisecond)
	return r.FileReplica.LTXFiles(ctx, db, level)
}

// TestUploaderCloseWaitsForNewDatabase: a database created while mounted
// has its replica position looked up in the background; a clean stop that
// comes before that lookup finished still ships its commits.
func TestUploaderCloseWaitsForNewDatabase(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store := OpenStore(t.TempDir(), log)
	defer store.Close()
	replica := NewFileReplica(t.TempDir())
	u := NewUploader(store, slowListing{replica}, log, Options{})
	store.OnAppend = u.Notify
	for txid := ltx.TXID(1); txid <= 3; txid++ {
		appendTX(t, store, txid, false)
	}
	if pending := u.Close(10 * time.Second); len(pending) != 0 {
		t.Fatalf("pending after a clean stop: %v", pending)
	}
	infos, err := replica.LTXFiles(context.Background(), "app.db", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) == 0 || infos[len(infos)-1].MaxTXID != 3 {
		t.Fatalf("replica holds %s after a clean stop, want up to txid 3", rangesOf(infos))
	}
}

// TestUploaderKeepsMergingWhileBehind: once a backlog passed MaxBacklog,
// commits that pile up during an upload keep going up merged after the
// uploader caught up once (at full speed it catches up at every pause of
// the writer), until it has stayed caught up for mergeCooldown; a commit
// waiting alone goes up alone all along.
func TestUploaderKeepsMergingWhileBehind(t *testing.T) {
	ctx := context.Background()
	store, replica, u := startUploader(t, Options{MaxBacklog: 5})
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// burst appends commits from..to while nothing ships, then ships them.
	burst := func(from, to ltx.TXID) {
		t.Helper()
		u.Pause()
		for txid := from; txid <= to; txid++ {
			appendTX(t, store, txid, false)
		}
		u.Resume()
		if err := u.WaitFor(wctx, "app.db", to); err != nil {
			t.Fatal(err)
		}
	}
	burst(1, 10) // past MaxBacklog: merged
	burst(11, 11)
	burst(12, 14) // under MaxBacklog, but within the cooldown: merged
	time.Sleep(mergeCooldown + 100*time.Millisecond)
	burst(15, 15)
	burst(16, 18) // the cooldown is over: one file each
	infos, err := replica.LTXFiles(ctx, "app.db", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rangesOf(infos), "1-10 11-11 12-14 15-15 16-16 17-17 18-18"; got != want {
		t.Fatalf("replica holds %s, want %s", got, want)
	}
}

// TestUploaderSpacesMerges: while a backlog merges, an upload starts no
// sooner than mergeEvery after the one before it, so what arrives meanwhile
// goes up in one PUT instead of one each.
func TestUploaderSpacesMerges(t *testing.T) {
	ctx := context.Background()
	store, replica, u := startUploader(t, Options{MaxBacklog: 5})
	u.mu.Lock()
	u.mergeEvery = time.Second
	u.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u.Pause()
	for txid := ltx.TXID(1); txid <= 10; txid++ {
		appendTX(t, store, txid, false)
	}
	start := time.Now()
	u.Resume()
	if err := u.WaitFor(wctx, "app.db", 10); err != nil {
		t.Fatal(err)
	}
	appendTX(t, store, 11, false)
	time.Sleep(100 * time.Millisecond) // time enough to ship 11 alone
	if pos := u.Pos("app.db"); pos != 10 {
		t.Fatalf("replica at txid %s 100 ms after txid 11, want still 10 (the next merge waits)", pos)
	}
	appendTX(t, store, 12, false)
	if err := u.WaitFor(wctx, "app.db", 12); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < time.Second {
		t.Fatalf("txids 11-12 shipped %v after the merge before them, want at least 1s", took)
	}
	infos, err := replica.LTXFiles(ctx, "app.db", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rangesOf(infos), "1-10 11-12"; got != want {
		t.Fatalf("replica holds %s, want %s", got, want)
	}
}

// TestOutpaced: merging starts before MaxBacklog only when commits clearly
// arrive faster than single-commit PUTs can carry them.
func TestOutpaced(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		what     string
		waiting  int64
		span     time.Duration
		putTime  time.Duration
		inFlight int
		want     bool
	}{
		{"full speed to a file replica: 16 commits a ms, 1 ms PUTs", 32, 2 * ms, ms, 1, true},
		{"full speed to S3: 8 PUTs of 3 ms at once", 48, 3 * ms, 3 * ms, 8, true},
		{"too few waiting to tell", outpacedMin - 1, ms / 10, 100 * ms, 1, false},
		{"100 commits/s, a PUT stalled 320 ms (1 ms before)", 32, 320 * ms, ms, 1, false},
		{"100 commits/s to S3 with 50 ms PUTs", 32, 320 * ms, 50 * ms, 8, false},
		{"1,000 commits/s to S3 with 50 ms PUTs, 8 at once", 40, 40 * ms, 50 * ms, 8, true},
		{"twice as fast as single PUTs: not clearly", 40, 20 * ms, ms, 1, false},
	} {
		if got := outpacedBy(c.waiting, c.span, c.putTime, c.inFlight); got != c.want {
			t.Errorf("%s: outpaced %v, want %v", c.what, got, c.want)
		}
	}
}

// TestUploaderMergesWhenOutpaced: a burst that arrives far faster than
// single-commit PUTs go up merged well before MaxBacklog; commits at a pace
// the uploader keeps up with go up one file each.
func TestUploaderMergesWhenOutpaced(t *testing.T) {
	ctx := context.Background()
	store, replica, u := startUploader(t, Options{MaxBacklog: 1000})
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// At a pace the uploader follows (100 commits/s): one file each.
	for txid := ltx.TXID(1); txid <= 10; txid++ {
		appendTX(t, store, txid, false)
		time.Sleep(10 * time.Millisecond) // the pace of the writer, not a wait for the uploader
	}
	if err := u.WaitFor(wctx, "app.db", 10); err != nil {
		t.Fatal(err)
	}
	u.mu.Lock()
	measured := u.putTime
	// A replica whose PUT takes 50 ms (it is measured; the test sets it so
	// that the burst below is outpaced on any machine: its 300 commits
	// would take 15 s one at a time, so they need only arrive within 3.75 s,
	// which they do even under the race detector on a loaded machine).
	u.putTime = 50 * time.Millisecond
	u.mu.Unlock()
	if measured <= 0 {
		t.Fatal("no single-commit PUT time measured after 10 single PUTs")
	}
	// A burst of 300 commits, stored in milliseconds.
	u.Pause()
	for txid := ltx.TXID(11); txid <= 310; txid++ {
		appendTX(t, store, txid, false)
	}
	u.Resume()
	if err := u.WaitFor(wctx, "app.db", 310); err != nil {
		t.Fatal(err)
	}
	infos, err := replica.LTXFiles(ctx, "app.db", 0)
	if err != nil {
		t.Fatal(err)
	}
	want := "1-1 2-2 3-3 4-4 5-5 6-6 7-7 8-8 9-9 10-10 11-310"
	if got := rangesOf(infos); got != want {
		t.Fatalf("replica holds %s, want %s", got, want)
	}
}
