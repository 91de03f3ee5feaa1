package restore

import (
	"bytes"
	"database/sql"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// history writes an LTX history into a FileReplica the way sqlfs's capture
// does: a snapshot at TXID 1, then one file per commit holding the pages that
// changed (all pages when the page size changed), with real checksums. It
// keeps the database bytes at every TXID so tests can compare restores.
type history struct {
	t      *testing.T
	rep    *ship.FileReplica
	db     string
	txid   ltx.TXID
	state  []byte // database at txid
	ps     uint32 // page size at txid
	sum    ltx.Checksum
	states map[ltx.TXID][]byte
	start  time.Time

	// tamper, when set, may change the header and post-apply checksum of
	// the next file before it is encoded.
	tamper func(hdr *ltx.Header, post *ltx.Checksum)
}

func newHistory(t *testing.T, db string) *history {
	return &history{
		t: t, rep: ship.NewFileReplica(t.TempDir()), db: db,
		states: map[ltx.TXID][]byte{},
		start:  time.Date(2024, 1, 15, 10, 30, 0, 0, time.UTC),
	}
}

// commitFile records the current contents of a database file as the next TXID.
func (h *history) commitFile(path string) ltx.TXID {
	h.t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.commitBytes(data)
}

// commitBytes records data (a whole database; empty = deleted) as the next TXID.
func (h *history) commitBytes(data []byte) ltx.TXID {
	h.t.Helper()
	ps := h.ps
	if len(data) > 0 {
		ps = uint32(binary.BigEndian.Uint16(data[16:18]))
		if ps == 1 {
			ps = 65536
		}
	} else if ps == 0 {
		ps = 4096
	}
	if len(data)%int(ps) != 0 {
		h.t.Fatalf("database size %d is not a multiple of page size %d", len(data), ps)
	}
	full := ps != h.ps
	pages := map[uint32][]byte{}
	for pgno := uint32(1); int(pgno)*int(ps) <= len(data); pgno++ {
		page := data[int(pgno-1)*int(ps) : int(pgno)*int(ps)]
		off := int(pgno-1) * int(ps)
		if full || off+int(ps) > len(h.state) || !bytes.Equal(page, h.state[off:off+int(ps)]) {
			pages[pgno] = page
		}
	}
	return h.commitPages(ps, uint32(len(data)/int(ps)), pages)
}

// commitPages records a commit that sets the database size to commit pages
// and writes pages; every other page keeps its old content, or is zeros if
// it is new or a truncation dropped it.
func (h *history) commitPages(ps, commit uint32, pages map[uint32][]byte) ltx.TXID {
	h.t.Helper()
	h.txid++
	next := make([]byte, int(commit)*int(ps))
	if ps == h.ps {
		copy(next, h.state)
	}
	lock := ltx.LockPgno(ps)
	pgnos := make([]uint32, 0, len(pages))
	for pgno, page := range pages {
		if pgno != lock {
			copy(next[int(pgno-1)*int(ps):], page)
			pgnos = append(pgnos, pgno)
		}
	}
	sort.Slice(pgnos, func(i, j int) bool { return pgnos[i] < pgnos[j] })

	post := ltx.ChecksumFlag
	for pgno := uint32(1); pgno <= commit; pgno++ {
		if pgno != lock {
			post = ltx.ChecksumFlag | (post ^ ltx.ChecksumPage(pgno, next[int(pgno-1)*int(ps):int(pgno)*int(ps)]))
		}
	}
	hdr := ltx.Header{
		Version: ltx.Version, PageSize: ps, Commit: commit,
		MinTXID: h.txid, MaxTXID: h.txid,
		Timestamp:        h.start.Add(time.Duration(h.txid) * time.Second).UnixMilli(),
		PreApplyChecksum: h.sum,
	}
	if h.tamper != nil {
		h.tamper(&hdr, &post)
		h.tamper = nil
	}
	var buf bytes.Buffer
	enc, err := ltx.NewEncoder(&buf)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := enc.EncodeHeader(hdr); err != nil {
		h.t.Fatal(err)
	}
	for _, pgno := range pgnos {
		if err := enc.EncodePage(ltx.PageHeader{Pgno: pgno}, next[int(pgno-1)*int(ps):int(pgno)*int(ps)]); err != nil {
			h.t.Fatal(err)
		}
	}
	enc.SetPostApplyChecksum(post)
	if err := enc.Close(); err != nil {
		h.t.Fatal(err)
	}
	if err := h.rep.WriteLTX(h.db, 0, h.txid, h.txid, buf.Bytes(), false); err != nil {
		h.t.Fatal(err)
	}
	h.state, h.ps, h.sum = next, ps, post
	h.states[h.txid] = slices.Clone(next)
	return h.txid
}

// truncateThenGrow is a history of 512-byte pages that shrinks and then
// grows without writing the pages in between, which must read as zeros.
func truncateThenGrow(t *testing.T) *history {
	h := newHistory(t, "x.db")
	page := func(b byte) []byte { return bytes.Repeat([]byte{b}, 512) }
	all := map[uint32][]byte{}
	for pgno := uint32(1); pgno <= 10; pgno++ {
		all[pgno] = page(byte(pgno))
	}
	h.commitPages(512, 10, all)
	h.commitPages(512, 4, map[uint32][]byte{2: page(0xaa)})                // shrink
	h.commitPages(512, 8, map[uint32][]byte{7: page(0xbb), 8: page(0xcc)}) // grow; 5 and 6 are zeros
	h.commitPages(512, 12, map[uint32][]byte{1: page(0xdd)})               // grow; 9..12 are zeros
	return h
}

// path returns the absolute path of the file holding txid.
func (h *history) path(txid ltx.TXID) string {
	return filepath.Join(h.rep.Root, ship.LTXPath(h.db, 0, txid, txid))
}

// openSQLite opens a database in rollback-journal (DELETE) mode, so the
// file holds every committed page as soon as Exec returns.
func openSQLite(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=DELETE")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

func mustExec(t *testing.T, db *sql.DB, query string, args ...any) {
	t.Helper()
	if _, err := db.Exec(query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// integrityCheck runs PRAGMA integrity_check on a database file, read-only.
func integrityCheck(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&res); err != nil {
		t.Fatalf("integrity_check %s: %v", path, err)
	}
	if res != "ok" {
		t.Fatalf("integrity_check %s: %s", path, res)
	}
}

// dirNames lists a directory.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}
