package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sqlfs/sqlfs/restore"
)

// runRestore writes a database from its history to a new file:
//
//	sqlfs restore -o PATH [-txid TXID | -timestamp RFC3339] [-if-db-not-exists]
//	              [-if-replica-exists] [-integrity-check] [-parallelism N]
//	              [-data DIR] [-db NAME] [URL]
//
// The database name defaults to the base name of PATH. Nothing is written
// unless the whole restore succeeds.
func runRestore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("restore", stderr)
	output := fs.String("o", "", "write the restored database to `PATH`, which must not exist")
	txidFlag := fs.String("txid", "", "restore to `TXID` (hex, as sqlfs ltx prints it); default: the latest")
	tsFlag := fs.String("timestamp", "", "restore the last commit at or before `TIME` (RFC 3339, e.g. 2024-01-15T10:30:00Z)")
	ifDBNotExists := fs.Bool("if-db-not-exists", false, "do nothing (exit 0) when PATH already exists")
	ifReplicaExists := fs.Bool("if-replica-exists", false, "do nothing (exit 0) when there is no history to restore")
	check := fs.Bool("integrity-check", false, "run PRAGMA integrity_check on the result before it is put in place")
	parallelism := fs.Int("parallelism", restore.DefaultParallelism, "download up to `N` pieces of history at once")
	hf := addHistoryFlags(fs)
	pos, err := parseArgs(fs, args, stdout)
	if err != nil {
		return err
	}
	opt, err := restoreOptions(*output, *txidFlag, *tsFlag, *parallelism)
	if err != nil {
		return err
	}
	if *ifDBNotExists {
		if _, err := os.Lstat(*output); err == nil {
			fmt.Fprintf(stderr, "%s exists; nothing restored (-if-db-not-exists)\n", *output)
			return nil
		}
	}
	if *check {
		opt.Check = integrityCheck
	}

	h, err := hf.resolve(fs, pos)
	if err == nil && h.db == "" {
		h.db = filepath.Base(*output)
	}
	var res *restore.Result
	if err == nil {
		stop := showProgress(stderr, opt.Progress)
		res, err = restore.Restore(ctx, h.replica, h.db, opt)
		stop()
		switch {
		case errors.Is(err, restore.ErrNoHistory):
			err = h.noHistory(ctx)
		case errors.Is(err, restore.ErrCorrupt), errors.Is(err, restore.ErrGap), errors.Is(err, restore.ErrChecksumMismatch):
			err = fmt.Errorf("replica %s: %w", h.where, err) // the message names the file
		}
	}
	var noReplica *noReplicaError
	if errors.As(err, &noReplica) && *ifReplicaExists {
		fmt.Fprintf(stderr, "%v; nothing restored (-if-replica-exists)\n", err)
		return nil
	} else if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "restored %s at txid %s (%d pages, %d bytes/page) to %s\n",
		h.db, res.TXID, res.Commit, res.PageSize, *output)
	return nil
}

// restoreOptions checks the flags that say what to restore.
func restoreOptions(output, txidFlag, tsFlag string, parallelism int) (restore.Options, error) {
	opt := restore.Options{Output: output, Parallelism: parallelism, Progress: &restore.Progress{}}
	if output == "" {
		return opt, usagef("missing -o PATH: where to write the restored database")
	}
	if txidFlag != "" && tsFlag != "" {
		return opt, usagef("give -txid or -timestamp, not both")
	}
	if parallelism < 1 {
		return opt, usagef("-parallelism %d: want at least 1", parallelism)
	}
	if txidFlag != "" {
		txid, err := parseTXID(txidFlag)
		if err != nil {
			return opt, usagef("-txid %s: not a hex TXID like 000000000000002a", txidFlag)
		} else if txid == 0 {
			return opt, usagef("-txid %s: TXIDs start at 1", txidFlag)
		}
		opt.TXID = txid
	}
	if tsFlag != "" {
		ts, err := time.Parse(time.RFC3339Nano, tsFlag)
		if err != nil {
			return opt, usagef("-timestamp %s: not an RFC 3339 time like 2024-01-15T10:30:00Z", tsFlag)
		}
		opt.Time = ts
	}
	return opt, nil
}
