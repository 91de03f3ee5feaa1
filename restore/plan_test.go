package restore

import (
	"context"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/superfly/ltx"
)

// listing is a Replica that only lists: Plan reads nothing else.
type listing []*ltx.FileInfo

func (l listing) Databases(ctx context.Context) ([]string, error) { return []string{"x.db"}, nil }

func (l listing) LTXFiles(ctx context.Context, db string, level int) ([]*ltx.FileInfo, error) {
	if db != "x.db" || level != 0 {
		return nil, nil
	}
	return l, nil
}

func (l listing) OpenLTX(ctx context.Context, db string, level int, minTXID, maxTXID ltx.TXID) (io.ReadCloser, error) {
	return nil, errors.New("not stored")
}

func files(ranges ...[2]ltx.TXID) listing {
	var l listing
	for _, r := range ranges {
		l = append(l, &ltx.FileInfo{MinTXID: r[0], MaxTXID: r[1]})
	}
	return l
}

func TestPlan(t *testing.T) {
	for _, tt := range []struct {
		name   string
		files  listing
		target ltx.TXID
		want   [][2]ltx.TXID
		err    error
		msg    string
	}{
		{name: "latest", files: files([2]ltx.TXID{1, 1}, [2]ltx.TXID{2, 2}, [2]ltx.TXID{3, 3}), want: [][2]ltx.TXID{{1, 1}, {2, 2}, {3, 3}}},
		{name: "earlier", files: files([2]ltx.TXID{1, 1}, [2]ltx.TXID{2, 2}, [2]ltx.TXID{3, 3}), target: 2, want: [][2]ltx.TXID{{1, 1}, {2, 2}}},
		{name: "first", files: files([2]ltx.TXID{1, 1}, [2]ltx.TXID{2, 2}), target: 1, want: [][2]ltx.TXID{{1, 1}}},
		{name: "merged files", files: files([2]ltx.TXID{1, 1}, [2]ltx.TXID{2, 2}, [2]ltx.TXID{2, 4}, [2]ltx.TXID{3, 3}, [2]ltx.TXID{5, 5}), want: [][2]ltx.TXID{{1, 1}, {2, 4}, {5, 5}}},
		{name: "merged past target", files: files([2]ltx.TXID{1, 1}, [2]ltx.TXID{2, 2}, [2]ltx.TXID{2, 4}, [2]ltx.TXID{3, 3}), target: 3, want: [][2]ltx.TXID{{1, 1}, {2, 2}, {3, 3}}},
		{name: "inside merged", files: files([2]ltx.TXID{1, 1}, [2]ltx.TXID{2, 4}), target: 3, err: ErrTXIDNotFound,
			msg: "txid 0000000000000003 not found: x.db/0000/0000000000000002-0000000000000004.ltx merges txids 0000000000000002 through 0000000000000004 into one state; the nearest restorable txids are 0000000000000001 and 0000000000000004"},
		{name: "no history", err: ErrNoHistory, msg: "no history for x.db"},
		{name: "past the end", files: files([2]ltx.TXID{1, 1}, [2]ltx.TXID{2, 0x42}), target: 0x99, err: ErrTXIDNotFound,
			msg: "txid 0000000000000099 not found: history of x.db ends at 0000000000000042"},
		{name: "gap", files: files([2]ltx.TXID{1, 1}, [2]ltx.TXID{2, 2}, [2]ltx.TXID{5, 5}), err: ErrGap,
			msg: "history of x.db is missing txids 0000000000000003 through 0000000000000004"},
		{name: "gap before target", files: files([2]ltx.TXID{1, 1}, [2]ltx.TXID{3, 3}, [2]ltx.TXID{4, 4}), target: 3, err: ErrGap},
		{name: "gap after target", files: files([2]ltx.TXID{1, 1}, [2]ltx.TXID{3, 3}), target: 1, want: [][2]ltx.TXID{{1, 1}}},
		{name: "no snapshot", files: files([2]ltx.TXID{4, 4}, [2]ltx.TXID{5, 5}), err: ErrGap,
			msg: "history of x.db is missing txids 0000000000000001 through 0000000000000003"},
		{name: "overlap only", files: files([2]ltx.TXID{1, 2}, [2]ltx.TXID{2, 4}), err: ErrGap,
			msg: "history of x.db has no file starting at txid 0000000000000003"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := Plan(context.Background(), tt.files, "x.db", tt.target)
			if tt.err != nil {
				if !errors.Is(err, tt.err) || (tt.msg != "" && err.Error() != tt.msg) {
					t.Fatalf("err = %v, want %v: %s", err, tt.err, tt.msg)
				}
				return
			} else if err != nil {
				t.Fatal(err)
			}
			var got [][2]ltx.TXID
			for _, fi := range plan {
				got = append(got, [2]ltx.TXID{fi.MinTXID, fi.MaxTXID})
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("plan %v, want %v", got, tt.want)
			}
		})
	}
}
