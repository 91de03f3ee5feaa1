package restore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sqlfs/sqlfs/ship"
)

func TestList(t *testing.T) {
	h := newHistory(t, "x.db")
	page := make([]byte, 512)
	h.commitPages(512, 1, map[uint32][]byte{1: page})
	h.commitPages(512, 1, map[uint32][]byte{1: page})
	h.commitPages(512, 1, map[uint32][]byte{1: page})
	// A file whose header cannot be read is listed with its modification time.
	mtime := time.Date(2023, 5, 6, 7, 8, 9, 0, time.UTC)
	if err := os.WriteFile(h.path(3), []byte("torn"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(h.path(3), mtime, mtime)
	// A higher level is listed too, in TXID order.
	if err := os.MkdirAll(filepath.Join(h.rep.Root, ship.LevelDir("x.db", 9)), 0o755); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(h.path(1))
	os.WriteFile(filepath.Join(h.rep.Root, ship.LTXPath("x.db", 9, 1, 1)), data, 0o644)

	entries, err := List(context.Background(), h.rep, "x.db")
	if err != nil {
		t.Fatal(err)
	}
	want := []FileEntry{
		{Level: 0, MinTXID: 1, MaxTXID: 1, Created: h.start.Add(1 * time.Second)},
		{Level: 9, MinTXID: 1, MaxTXID: 1, Created: h.start.Add(1 * time.Second)},
		{Level: 0, MinTXID: 2, MaxTXID: 2, Created: h.start.Add(2 * time.Second)},
		{Level: 0, MinTXID: 3, MaxTXID: 3, Size: 4, Created: mtime},
	}
	if len(entries) != len(want) {
		t.Fatalf("entries %+v", entries)
	}
	for i, e := range entries {
		w := want[i]
		if e.Level != w.Level || e.MinTXID != w.MinTXID || e.MaxTXID != w.MaxTXID || !e.Created.Equal(w.Created) || e.Created.Location() != time.UTC {
			t.Fatalf("entry %d: %+v, want %+v", i, e, w)
		}
		if w.Size != 0 && e.Size != w.Size || e.Size <= 0 {
			t.Fatalf("entry %d size %d", i, e.Size)
		}
	}
	if _, err := List(context.Background(), h.rep, "y.db"); !errors.Is(err, ErrNoHistory) {
		t.Fatalf("err = %v", err)
	}
}
