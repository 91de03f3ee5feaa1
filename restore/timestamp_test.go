package restore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/superfly/ltx"
)

func TestTXIDAt(t *testing.T) {
	h := sqliteHistory(t) // commit n at h.start + n seconds
	ctx := context.Background()
	for _, tt := range []struct {
		at   time.Duration // after h.start
		want ltx.TXID
	}{
		{1 * time.Second, 1},
		{1500 * time.Millisecond, 1},
		{3 * time.Second, 3},
		{3*time.Second - time.Millisecond, 2},
		{time.Duration(h.txid) * time.Second, h.txid},
		{time.Hour, h.txid},
	} {
		got, err := TXIDAt(ctx, h.rep, "app.db", h.start.Add(tt.at))
		if err != nil || got != tt.want {
			t.Errorf("TXIDAt(start+%v) = %s, %v; want %s", tt.at, got, err, tt.want)
		}
	}
	_, err := TXIDAt(ctx, h.rep, "app.db", h.start)
	if !errors.Is(err, ErrBeforeHistory) || !strings.Contains(err.Error(), "2024-01-15T10:30:01Z") {
		t.Errorf("before the first commit: %v", err)
	}
	if _, err := TXIDAt(ctx, h.rep, "nope.db", h.start); !errors.Is(err, ErrNoHistory) {
		t.Errorf("unknown database: %v", err)
	}

	out := filepath.Join(t.TempDir(), "at.db")
	res, err := Restore(ctx, h.rep, "app.db", Options{Output: out, Time: h.start.Add(4500 * time.Millisecond)})
	if err != nil || res.TXID != 4 {
		t.Fatalf("restore by time: %+v, %v", res, err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, h.states[4]) {
		t.Fatal("restore by time differs from the state at txid 4")
	}
}
