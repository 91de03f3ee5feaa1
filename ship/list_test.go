package ship

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/superfly/ltx"
)

// parseLTXName must accept exactly the names ltx.ParseFilename accepts, and
// read the same TXIDs from them.
func TestParseLTXName(t *testing.T) {
	for _, name := range []string{
		"0000000000000001-0000000000000001.ltx",
		"00000000000000ff-0000000000001000.ltx",
		"ffffffffffffffff-ffffffffffffffff.ltx",
		"0123456789abcdef-fedcba9876543210.ltx",
		"0000000000000001-0000000000000001.ltx.tmp",
		"0000000000000001-0000000000000001.LTX",
		"000000000000000A-000000000000000a.ltx",
		"000000000000000a-000000000000000A.ltx",
		"0000000000000001_0000000000000001.ltx",
		"000000000000001-00000000000000001.ltx",
		"0000000000000001-000000000000001.ltx",
		"000000000000000g-0000000000000001.ltx",
		"0000000000000001-0000000000000001xltx",
		"capture.log",
		"",
	} {
		checkParseLTXName(t, name)
	}
}

func FuzzParseLTXName(f *testing.F) {
	f.Add("0000000000000001-0000000000000001.ltx")
	f.Add("00000000000000ff-000000000000100G.ltx")
	f.Add("0000000000000001-0000000000000001.ltx.tmp")
	f.Fuzz(checkParseLTXName)
}

func checkParseLTXName(t *testing.T, name string) {
	wantMin, wantMax, err := ltx.ParseFilename(name)
	gotMin, gotMax, ok := parseLTXName(name)
	if ok != (err == nil) || ok && (gotMin != wantMin || gotMax != wantMax) {
		t.Fatalf("parseLTXName(%q) = %s, %s, %v; ltx.ParseFilename: %s, %s, %v", name, gotMin, gotMax, ok, wantMin, wantMax, err)
	}
}

// LTXFilesBetween lists what LTXFiles lists with after < MinTXID <= upTo,
// from the layout and from the capture log, and nothing else (the methods
// themselves: ship.LTXFilesBetween filters what they return again).
func TestLocalLTXFilesBetween(t *testing.T) {
	defer func(d time.Duration) { closeWriteOut = d }(closeWriteOut)
	closeWriteOut = 0
	ctx := context.Background()
	dir := t.TempDir()
	fr := NewFileReplica(dir)
	for txid := ltx.TXID(1); txid <= 30; txid++ {
		if err := fr.WriteLTX("app.db", 0, txid, txid, encodeLTX(t, txid), false); err != nil {
			t.Fatal(err)
		}
	}
	// A merged file, and files that are not history.
	if err := fr.WriteLTX("app.db", 0, 31, 33, encodeLTX(t, 33), false); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"0000000000000022-0000000000000022.ltx.tmp", "0000000000000023-0000000000000023.LTX"} {
		if err := os.WriteFile(filepath.Join(dir, LevelDir("app.db", 0), name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Commits 34-80 through a store that leaves its backlog in the log.
	s := OpenStore(dir, slog.New(slog.DiscardHandler))
	for txid := ltx.TXID(34); txid <= 80; txid++ {
		appendTX(t, s, txid, false)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	l := OpenLocal(dir)
	if recs, err := l.logged("app.db"); err != nil || len(recs) == 0 {
		t.Fatalf("log holds %d records (%v); the test wants some", len(recs), err)
	}
	all, err := l.LTXFiles(ctx, "app.db", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 78 {
		t.Fatalf("LTXFiles lists %d files, want 78", len(all))
	}
	for _, c := range []struct{ after, upTo ltx.TXID }{
		{0, 0}, {0, 1}, {0, 30}, {1, 2}, {29, 31}, {30, 32}, {31, 40}, {33, 34}, {50, 79}, {79, 80}, {80, 200}, {0, ^ltx.TXID(0)}, {40, 39},
	} {
		var want []*ltx.FileInfo
		for _, fi := range all {
			if fi.MinTXID > c.after && fi.MinTXID <= c.upTo {
				want = append(want, fi)
			}
		}
		for _, r := range []listerBetween{l, fr} {
			got, err := r.LTXFilesBetween(ctx, "app.db", 0, c.after, c.upTo)
			if err != nil {
				t.Fatal(err)
			}
			if r == listerBetween(fr) {
				// The plain directory lacks what is still in the log.
				want = want[:0:0]
				files, _ := fr.LTXFiles(ctx, "app.db", 0)
				for _, fi := range files {
					if fi.MinTXID > c.after && fi.MinTXID <= c.upTo {
						want = append(want, fi)
					}
				}
			}
			if len(got) != len(want) {
				t.Fatalf("%T between %d and %d: %d files, want %d", r, c.after, c.upTo, len(got), len(want))
			}
			for i := range got {
				if *got[i] != *want[i] {
					t.Fatalf("%T between %d and %d: file %d is %+v, want %+v", r, c.after, c.upTo, i, *got[i], *want[i])
				}
			}
		}
	}
}
