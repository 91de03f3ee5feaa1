package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/sqlfs/sqlfs/restore"
	"github.com/superfly/ltx"
)

// runRestore writes a database from its history to a new file:
//
//	sqlfs restore -o PATH [-txid TXID] [-data DIR] [-db NAME] [URL]
//
// The database name defaults to the base name of PATH. Nothing is written
// unless the whole restore succeeds.
func runRestore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("restore", stderr)
	output := fs.String("o", "", "write the restored database to `PATH`, which must not exist")
	txidFlag := fs.String("txid", "", "restore to `TXID` (hex, as sqlfs ltx prints it); default: the latest")
	hf := addHistoryFlags(fs)
	pos, err := parseArgs(fs, args, stdout)
	if err != nil {
		return err
	}
	if *output == "" {
		return usagef("missing -o PATH: where to write the restored database")
	}
	var txid ltx.TXID
	if *txidFlag != "" {
		if txid, err = parseTXID(*txidFlag); err != nil {
			return usagef("-txid %s: not a hex TXID like 000000000000002a", *txidFlag)
		} else if txid == 0 {
			return usagef("-txid %s: TXIDs start at 1", *txidFlag)
		}
	}
	h, err := hf.resolve(fs, pos)
	if err != nil {
		return err
	}
	if h.db == "" {
		h.db = filepath.Base(*output)
	}

	res, err := restore.Restore(ctx, h.replica, h.db, restore.Options{Output: *output, TXID: txid})
	if errors.Is(err, restore.ErrNoHistory) {
		return h.noHistory(ctx)
	} else if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "restored %s at txid %s (%d pages, %d bytes/page) to %s\n",
		h.db, res.TXID, res.Commit, res.PageSize, *output)
	return nil
}
