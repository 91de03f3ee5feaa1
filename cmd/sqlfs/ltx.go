package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/sqlfs/sqlfs/restore"
	"github.com/sqlfs/sqlfs/ship"
	"github.com/superfly/ltx"
)

// runLTX lists the LTX files of one database's history, one line per file
// (min_txid, max_txid, size, created, level):
//
//	sqlfs ltx [-json] [-data DIR] [-db NAME] [URL]
func runLTX(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ltx", stderr)
	asJSON := fs.Bool("json", false, "print a JSON array instead of a table")
	hf := addHistoryFlags(fs)
	pos, err := parseArgs(fs, args, stdout)
	if err != nil {
		return err
	}
	h, err := hf.resolve(fs, pos)
	if err != nil {
		return err
	}
	if h.db == "" {
		if err := h.pickOnlyDatabase(ctx); err != nil {
			return err
		}
	}
	entries, err := restore.List(ctx, h.replica, h.db)
	if errors.Is(err, restore.ErrNoHistory) {
		return h.noHistory(ctx)
	} else if err != nil {
		return err
	}
	if *asJSON {
		return writeLTXJSON(stdout, entries)
	}
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	// The playbook's four columns first, as Litestream prints them, so
	// scripts that cut them keep working; the level last.
	fmt.Fprintln(tw, "min_txid\tmax_txid\tsize\tcreated\tlevel")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\n", e.MinTXID, e.MaxTXID, e.Size, ltx.FormatTimestamp(e.Created), e.Level)
	}
	return tw.Flush()
}

func writeLTXJSON(w io.Writer, entries []restore.FileEntry) error {
	type row struct {
		Level   int      `json:"level"`
		MinTXID ltx.TXID `json:"min_txid"`
		MaxTXID ltx.TXID `json:"max_txid"`
		Size    int64    `json:"size"`
		Created string   `json:"created"`
	}
	rows := make([]row, 0, len(entries))
	for _, e := range entries {
		rows = append(rows, row{e.Level, e.MinTXID, e.MaxTXID, e.Size, ltx.FormatTimestamp(e.Created)})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rows)
}

// historyFlags are the flags naming where history is read from; ltx and
// restore share them.
type historyFlags struct {
	data    string
	db      string
	replica string
}

func addHistoryFlags(fs *flag.FlagSet) *historyFlags {
	hf := &historyFlags{}
	fs.StringVar(&hf.data, "data", defaultDataDir, "read the local history of the mount whose data dir is `DIR` (DIR/ltx)")
	fs.StringVar(&hf.db, "db", "", "the database `NAME` within the data dir or replica")
	fs.StringVar(&hf.replica, "replica", "", "read history from the replica at `URL` (the same as giving URL as an argument)")
	return hf
}

// noReplicaError says there is no history at all: a replica directory
// that is missing, or no files for the database. restore -if-replica-exists
// branches on it.
type noReplicaError struct{ msg string }

func (e *noReplicaError) Error() string { return e.msg }

func noReplicaf(format string, args ...any) error {
	return &noReplicaError{msg: fmt.Sprintf(format, args...)}
}

// history is a resolved source of history: a replica, and the database in it
// when the command line named one.
type history struct {
	replica ship.Replica
	where   string // the replica as the user named it, for messages
	db      string
}

// resolve turns -data, -replica, -db and an optional positional URL into a
// history. The source is, first match wins: the URL argument, -replica on
// the command line, -data on the command line, replica in the config file,
// the data dir. A URL names either a replica root (databases as
// subdirectories) or one database's history directory (it holds a 0000
// level directory).
func (hf *historyFlags) resolve(fs *flag.FlagSet, pos []string) (*history, error) {
	if len(pos) > 1 {
		return nil, usagef("unexpected arguments after %s: %s", pos[0], strings.Join(pos[1:], " "))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	raw := hf.replica
	switch {
	case len(pos) == 1 && set["replica"]:
		return nil, usagef("give the replica URL as an argument or with -replica, not both")
	case len(pos) == 1:
		raw = pos[0]
	case set["replica"]:
	case set["data"]:
		raw = ""
	}
	if raw == "" {
		root := dataDir{path: hf.data}.ltx()
		if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
			return nil, noReplicaf("data dir %s holds no history (%s does not exist)", hf.data, root)
		}
		return &history{replica: ship.OpenLocal(root), where: root, db: hf.db}, nil
	}
	if set["data"] {
		return nil, usagef("give -data or a replica URL, not both")
	}
	u, err := ship.ParseReplicaURL(raw)
	if err != nil {
		return nil, &usageError{msg: err.Error()}
	}
	if u.Scheme == "s3" {
		return hf.resolveS3(raw)
	}
	dir := u.Path
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, noReplicaf("replica %s does not exist", raw)
	}
	parent, name := filepath.Split(dir)
	if st, err := os.Stat(filepath.Join(parent, ship.LevelDir(name, 0))); err == nil && st.IsDir() {
		if hf.db != "" && hf.db != name {
			return nil, usagef("%s holds the history of %s, not -db %s", raw, name, hf.db)
		}
		return &history{replica: ship.OpenLocal(parent), where: raw, db: name}, nil
	}
	return &history{replica: ship.OpenLocal(dir), where: raw, db: hf.db}, nil
}

// resolveS3 opens an S3 replica URL that names either a mount's replica root
// or one database's history (a prefix holding a 0000 level).
func (hf *historyFlags) resolveS3(raw string) (*history, error) {
	ctx := context.Background()
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	prefix := strings.Trim(u.Path, "/")
	if i := strings.LastIndex(prefix, "/"); prefix != "" {
		parent := *u
		parent.Path = "/" + prefix[:max(i, 0)]
		name := prefix[i+1:]
		if pr, err := ship.OpenReplica(ctx, parent.String()); err == nil {
			if files, err := pr.LTXFiles(ctx, name, 0); err == nil && len(files) > 0 {
				if hf.db != "" && hf.db != name {
					return nil, usagef("%s holds the history of %s, not -db %s", raw, name, hf.db)
				}
				return &history{replica: pr, where: raw, db: name}, nil
			}
		}
	}
	r, err := ship.OpenReplica(ctx, raw)
	if err != nil {
		return nil, err
	}
	return &history{replica: r, where: raw, db: hf.db}, nil
}

// pickOnlyDatabase sets h.db to the replica's one database, or explains why
// it cannot.
func (h *history) pickOnlyDatabase(ctx context.Context) error {
	dbs, err := h.replica.Databases(ctx)
	if err != nil {
		return err
	}
	switch len(dbs) {
	case 0:
		return noReplicaf("no database history in %s", h.where)
	case 1:
		h.db = dbs[0]
		return nil
	default:
		return usagef("%s holds several databases (%s): choose one with -db", h.where, strings.Join(dbs, ", "))
	}
}

// noHistory is the error for a database the replica does not know.
func (h *history) noHistory(ctx context.Context) error {
	dbs, err := h.replica.Databases(ctx)
	if err != nil || len(dbs) == 0 {
		return noReplicaf("no history for database %s in %s", h.db, h.where)
	}
	return noReplicaf("no history for database %s in %s (it has %s)", h.db, h.where, strings.Join(dbs, ", "))
}

// parseArgs parses flags that may come before or after positional
// arguments (sqlfs restore URL -o PATH), and returns the positionals.
func parseArgs(fs *flag.FlagSet, args []string, stdout io.Writer) ([]string, error) {
	var pos []string
	for {
		if err := parseCommandLine(fs, args, stdout); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, applyConfig(fs)
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), applyConfig(fs)
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// parseTXID parses a TXID as sqlfs ltx prints it (16 hex digits) or any
// shorter hex number, as Litestream accepts: "2a" is 000000000000002a.
func parseTXID(s string) (ltx.TXID, error) {
	if len(s) == 16 {
		return ltx.ParseTXID(s)
	}
	if s == "" || len(s) > 16 {
		return 0, fmt.Errorf("invalid TXID %q", s)
	}
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid TXID %q", s)
	}
	return ltx.TXID(v), nil
}
