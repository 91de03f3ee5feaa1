// Command benchdriver runs one SQLite workload against one database path and
// prints one JSON line with the result. scripts/bench.sh runs it natively and
// through a sqlfs mount and compares the two.
//
//	benchdriver -db PATH -workload wal-normal-writes -duration 3s
//	{"workload":"wal-normal-writes","ops":12345,"seconds":3.0,"ops_per_sec":4115,...}
//
// Every run starts from a fresh database file: PATH and its -wal, -journal and
// -shm files are removed first. All work happens on one connection.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	_ "github.com/mattn/go-sqlite3"
)

// blobSize is the payload of every row the workloads write.
const blobSize = 100

// readRows is the size of the table the read workloads query.
const readRows = 10_000

// bulkRows is the number of rows the bulk workload inserts in one transaction.
const bulkRows = 50_000

// workload describes one benchmark: the journal mode and synchronous setting
// it runs with, and the function that does the work. run prepares what it
// needs, then times only the measured part and returns its count and duration.
type workload struct {
	journalMode string
	synchronous string
	run         func(ctx context.Context, c *sql.Conn, d time.Duration) (ops int, took time.Duration, err error)
}

var workloads = map[string]workload{
	"wal-normal-writes":  {"wal", "NORMAL", runWrites},
	"wal-full-writes":    {"wal", "FULL", runWrites},
	"delete-full-writes": {"delete", "FULL", runWrites},
	"wal-reads":          {"wal", "NORMAL", runReads},
	"delete-reads":       {"delete", "FULL", runReads},
	"bulk":               {"wal", "NORMAL", runBulk},
	"lag":                {"wal", "NORMAL", nil}, // runLag, with -rate and -watch
}

// result is the one line benchdriver prints.
type result struct {
	Workload    string  `json:"workload"`
	Ops         int     `json:"ops"`
	Seconds     float64 `json:"seconds"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	JournalMode string  `json:"journal_mode"`
	Synchronous string  `json:"synchronous"`
	SQLite      string  `json:"sqlite"`
	// The lag workload only: commit to visible in the replica.
	LagP50ms float64 `json:"lag_p50_ms,omitempty"`
	LagP99ms float64 `json:"lag_p99_ms,omitempty"`
	LagMaxms float64 `json:"lag_max_ms,omitempty"`
	Early    int     `json:"visible_before_commit_returned,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "benchdriver: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	db := flag.String("db", "", "database `path` (recreated)")
	name := flag.String("workload", "", "workload: "+workloadNames())
	duration := flag.Duration("duration", 3*time.Second, "how long timed workloads run (not bulk)")
	rate := flag.Int("rate", 100, "lag: commits per second")
	watch := flag.String("watch", "", "lag: the `DIR` where the replica's level-0 objects of this database appear")
	flag.Parse()
	w, ok := workloads[*name]
	switch {
	case *db == "":
		return errors.New("-db is required")
	case !ok:
		return fmt.Errorf("unknown -workload %q (want %s)", *name, workloadNames())
	case *duration <= 0:
		return errors.New("-duration must be positive")
	case flag.NArg() > 0:
		return fmt.Errorf("unexpected argument %q", flag.Arg(0))
	case *name == "lag" && (*watch == "" || *rate <= 0):
		return errors.New("-workload lag needs -watch DIR and a positive -rate")
	}
	ctx := context.Background()

	if err := removeDB(*db); err != nil {
		return err
	}
	sqldb, err := sql.Open("sqlite3", *db)
	if err != nil {
		return err
	}
	defer sqldb.Close()
	sqldb.SetMaxOpenConns(1)
	c, err := sqldb.Conn(ctx)
	if err != nil {
		return fmt.Errorf("open %s: %w", *db, err)
	}
	defer c.Close()

	version, err := setup(ctx, c, w)
	if err != nil {
		return fmt.Errorf("%s: %w", *db, err)
	}
	var ops int
	var took time.Duration
	lag := &lagResult{}
	if *name == "lag" {
		ops, took, lag, err = runLag(ctx, c, *duration, *rate, *watch)
	} else {
		ops, took, err = w.run(ctx, c, *duration)
	}
	secs := took.Seconds()
	if err != nil {
		return fmt.Errorf("%s on %s: %w", *name, *db, err)
	}
	if err := c.Close(); err != nil {
		return err
	}
	if err := sqldb.Close(); err != nil {
		return fmt.Errorf("close %s: %w", *db, err)
	}
	return json.NewEncoder(os.Stdout).Encode(result{
		Workload:    *name,
		Ops:         ops,
		Seconds:     round(secs, 3),
		OpsPerSec:   round(float64(ops)/secs, 0),
		JournalMode: w.journalMode,
		Synchronous: w.synchronous,
		SQLite:      version,
		LagP50ms:    lag.P50ms,
		LagP99ms:    lag.P99ms,
		LagMaxms:    lag.Maxms,
		Early:       lag.Early,
	})
}

// setup sets the connection's pragmas, checks that SQLite took the journal
// mode (a filesystem that cannot mmap -shm silently refuses WAL), creates the
// table and returns SQLite's version.
func setup(ctx context.Context, c *sql.Conn, w workload) (version string, err error) {
	for _, p := range []string{"PRAGMA busy_timeout = 5000", "PRAGMA synchronous = " + w.synchronous} {
		if _, err := c.ExecContext(ctx, p); err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
	}
	var mode string
	if err := c.QueryRowContext(ctx, "PRAGMA journal_mode = "+w.journalMode).Scan(&mode); err != nil {
		return "", fmt.Errorf("set journal_mode: %w", err)
	}
	if !strings.EqualFold(mode, w.journalMode) {
		return "", fmt.Errorf("journal_mode is %q, want %q", mode, w.journalMode)
	}
	if _, err := c.ExecContext(ctx, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)"); err != nil {
		return "", err
	}
	err = c.QueryRowContext(ctx, "SELECT sqlite_version()").Scan(&version)
	return version, err
}

// runWrites commits one INSERT of a random blob per transaction until d has passed.
func runWrites(ctx context.Context, c *sql.Conn, d time.Duration) (int, time.Duration, error) {
	stmt, err := c.PrepareContext(ctx, "INSERT INTO t (v) VALUES (?)")
	if err != nil {
		return 0, 0, err
	}
	defer stmt.Close()
	blob := make([]byte, blobSize)
	n := 0
	start := time.Now()
	for deadline := start.Add(d); time.Now().Before(deadline); n++ {
		fillRandom(blob)
		if _, err := stmt.ExecContext(ctx, blob); err != nil {
			return n, 0, err
		}
	}
	return n, time.Since(start), nil
}

// runReads fills the table with readRows rows (untimed), then reads random
// rows by rowid, one read transaction each, until d has passed.
func runReads(ctx context.Context, c *sql.Conn, d time.Duration) (int, time.Duration, error) {
	if err := insertRows(ctx, c, readRows); err != nil {
		return 0, 0, err
	}
	// Read from a checkpointed database, as a long-running app mostly does.
	if _, err := c.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		return 0, 0, err
	}
	stmt, err := c.PrepareContext(ctx, "SELECT v FROM t WHERE id = ?")
	if err != nil {
		return 0, 0, err
	}
	defer stmt.Close()
	var v []byte
	n := 0
	start := time.Now()
	for deadline := start.Add(d); time.Now().Before(deadline); n++ {
		id := 1 + rand.IntN(readRows)
		if err := stmt.QueryRowContext(ctx, id).Scan(&v); err != nil {
			return n, 0, fmt.Errorf("read row %d: %w", id, err)
		}
		if len(v) != blobSize {
			return n, 0, fmt.Errorf("row %d has %d bytes, want %d", id, len(v), blobSize)
		}
	}
	return n, time.Since(start), nil
}

// runBulk times one transaction inserting bulkRows rows; d is not used.
func runBulk(ctx context.Context, c *sql.Conn, _ time.Duration) (int, time.Duration, error) {
	start := time.Now()
	err := insertRows(ctx, c, bulkRows)
	return bulkRows, time.Since(start), err
}

// insertRows inserts n rows of random blobs in one transaction.
func insertRows(ctx context.Context, c *sql.Conn, n int) error {
	tx, err := c.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, "INSERT INTO t (v) VALUES (?)")
	if err != nil {
		return err
	}
	blob := make([]byte, blobSize)
	for range n {
		fillRandom(blob)
		if _, err := stmt.ExecContext(ctx, blob); err != nil {
			return err
		}
	}
	if err := stmt.Close(); err != nil {
		return err
	}
	return tx.Commit()
}

// fillRandom fills b with pseudo-random bytes (incompressible payloads).
func fillRandom(b []byte) {
	for i := 0; i < len(b); i += 8 {
		x := rand.Uint64()
		for j := i; j < len(b) && j < i+8; j++ {
			b[j] = byte(x)
			x >>= 8
		}
	}
}

// removeDB removes a database file and the files SQLite keeps beside it.
func removeDB(path string) error {
	for _, suffix := range []string{"", "-wal", "-journal", "-shm"} {
		if err := os.Remove(path + suffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

func workloadNames() string {
	return "wal-normal-writes, wal-full-writes, delete-full-writes, wal-reads, delete-reads, bulk, lag"
}

func round(x float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	return float64(int64(x*p+0.5)) / p
}
