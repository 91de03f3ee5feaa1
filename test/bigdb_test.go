package test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestBigDB grows a database past 1 GiB, so that it has a lock page (the
// page at byte 0x40000000, which SQLite never writes and LTX leaves out),
// then commits small changes to pages past it, and restores two TXIDs.
func TestBigDB(t *testing.T) {
	needE2E(t)
	if testing.Short() {
		t.Skip("writes more than 1 GiB through the mount (and again twice to restore)")
	}
	t.Parallel()
	data, mnt := newDirs(t)
	if free := freeBytes(t, filepath.Dir(data)); free < 8<<30 {
		t.Skipf("%.1f GiB free in the temp dir, want 8 GiB", float64(free)/(1<<30))
	}
	m := startMount(t, data, mnt)
	const name = "big.db"
	path := m.Path(name)

	db := openDB(t, path, "_journal_mode=DELETE")
	defer db.Close()
	exec := func(q string) uint64 {
		t.Helper()
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return lastTXID(t, data, name)
	}
	exec(`PRAGMA page_size=4096`)
	txid := exec(`CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)`)
	// One row of 4000 bytes per 4 KiB page: three transactions of ~360 MiB
	// take the file past 1 GiB (262,144 pages; the lock page is 262,145).
	for i := 0; i < 3; i++ {
		got := exec(`INSERT INTO t(v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<92000)
			SELECT randomblob(4000) FROM c`)
		if got != txid+1 {
			t.Errorf("bulk insert %d: history at TXID %d, want %d", i+1, got, txid+1)
		}
		txid = got
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	const lockByte = 0x40000000
	if fi.Size() < lockByte+16<<20 {
		t.Fatalf("database is %d bytes, want well past the lock page at %#x", fi.Size(), lockByte)
	}

	small := []string{
		`UPDATE t SET v = randomblob(4000) WHERE id = (SELECT max(id) FROM t)`,
		`INSERT INTO t(v) VALUES (randomblob(4000))`,
		`UPDATE t SET v = randomblob(3000) WHERE id IN (270000, 271000, 272000)`,
		`DELETE FROM t WHERE id > (SELECT max(id) FROM t) - 5`,
	}
	var earlier record
	for i, q := range small {
		got := exec(q)
		if got != txid+1 {
			t.Errorf("small commit %d: history at TXID %d, want %d", i+1, got, txid+1)
		}
		txid = got
		if i == 0 {
			earlier = record{"first small commit", txid, dbState(t, path)}
		}
	}
	db.Close()
	latest := record{"latest", txid, dbState(t, path)}
	checkHistory(t, data, name, txid)

	dir := t.TempDir()
	for _, r := range []record{earlier, latest} {
		out := filepath.Join(dir, fmt.Sprintf("%016x.db", r.txid))
		restore(t, data, name, r.txid, out)
		integrityCheck(t, out)
		if got := dbState(t, out); got != r.state {
			t.Errorf("TXID %d (%s): restored state %.12s, SQLite saw %.12s", r.txid, r.step, got, r.state)
		}
		os.Remove(out)
	}
	m.Stop()
}
