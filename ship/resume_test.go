package ship

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/superfly/ltx"
)

// replicaCompacted is a replica whose commits 1..5 retention has merged into
// one level-1 file (level 0 no longer holds them), built from the same
// commits appendTX stores, or from different ones when other is set.
func replicaCompacted(t *testing.T, other bool) *FileReplica {
	t.Helper()
	replica := NewFileReplica(t.TempDir())
	var inputs [][]byte
	for txid := ltx.TXID(1); txid <= 5; txid++ {
		inputs = append(inputs, encodeLTX(t, txid))
	}
	if other { // a last commit with another page: another post-apply checksum
		prev := bytes.Repeat([]byte{4}, 512)
		page := bytes.Repeat([]byte{0x99}, 512)
		inputs[4] = encodeWith(t, ltx.Header{Version: ltx.Version, PageSize: 512, Commit: 1, MinTXID: 5, MaxTXID: 5, Timestamp: 1,
			PreApplyChecksum: ltx.ChecksumFlag | ltx.ChecksumPage(1, prev)}, page, ltx.ChecksumFlag|ltx.ChecksumPage(1, page))
	}
	data, _, err := compactLTX(context.Background(), inputs)
	if err != nil {
		t.Fatal(err)
	}
	if err := replica.PutLTX(context.Background(), "app.db", 1, 1, 5, data, time.Now()); err != nil {
		t.Fatal(err)
	}
	return replica
}

// encodeWith encodes a one-page LTX file.
func encodeWith(t *testing.T, hdr ltx.Header, page []byte, post ltx.Checksum) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc, _ := ltx.NewEncoder(&buf)
	if err := enc.EncodeHeader(hdr); err != nil {
		t.Fatal(err)
	}
	if err := enc.EncodePage(ltx.PageHeader{Pgno: 1}, page); err != nil {
		t.Fatal(err)
	}
	enc.SetPostApplyChecksum(post)
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestUploaderResumesAfterCompactedHistory(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	store := OpenStore(t.TempDir(), log)
	defer store.Close()
	for txid := ltx.TXID(1); txid <= 7; txid++ {
		appendTX(t, store, txid, false)
	}
	replica := replicaCompacted(t, false)
	u := NewUploader(store, replica, log, Options{})
	defer u.Close(time.Second)
	if err := u.Start(ctx, "app.db", 7); err != nil {
		t.Fatal(err)
	}
	if pos := u.Pos("app.db"); pos != 5 {
		t.Fatalf("resumed at txid %s, want 5 (where level 1 reaches)", pos)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := u.WaitFor(wctx, "app.db", 7); err != nil {
		t.Fatal(err)
	}
	infos, err := replica.LTXFiles(ctx, "app.db", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := rangesOf(infos); got != "6-6 7-7" {
		t.Fatalf("level 0 of the replica holds %s, want 6-6 7-7 (1..5 are in level 1)", got)
	}

	// A replica whose level 1 ends in another state is another history.
	u2 := NewUploader(store, replicaCompacted(t, true), log, Options{})
	defer u2.Close(time.Second)
	if err := u2.Start(ctx, "app.db", 7); !errors.Is(err, ErrDiverged) {
		t.Fatalf("Start against a level-1 file of another history: %v, want ErrDiverged", err)
	}
}
