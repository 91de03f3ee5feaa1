// Command sqlfs is a FUSE filesystem for SQLite that captures every commit as
// an LTX file, and the tools to list and restore that history.
//
// Each subcommand lives in its own file (mount.go, ltx.go, restore.go) as a
// run function that parses its flags and returns an error; main turns that
// error into one line on stderr and an exit code.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `sqlfs - SQLite on FUSE with every commit captured, shipped and restorable

Usage:
  sqlfs mount   [-data DIR] [-replica URL] [-restore-if-missing] [-exec CMD] MOUNTPOINT
  sqlfs mount   (-at-txid TXID | -at-time RFC3339) (-data DIR | -replica URL) [-db NAME] MOUNTPOINT
  sqlfs ltx     [-json] [-data DIR] [-db NAME] [URL]
  sqlfs restore -o PATH [-txid TXID | -timestamp RFC3339] [-if-db-not-exists]
                [-if-replica-exists] [-integrity-check] [-data DIR] [-db NAME] [URL]

Every command takes -config FILE (YAML; /etc/sqlfs.yml when it exists).

Run 'sqlfs COMMAND -h' for the flags of one command.
`

// usageError marks a mistake in how sqlfs was called (exit code 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command line and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "mount":
		err = runMount(ctx, rest, stdout, stderr)
	case "ltx":
		err = runLTX(ctx, rest, stdout, stderr)
	case "restore":
		err = runRestore(ctx, rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "sqlfs: unknown command %q (want mount, ltx or restore)\n", cmd)
		return 2
	}
	var exitErr *exitCodeError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &exitErr):
		return exitErr.code
	default:
		fmt.Fprintf(stderr, "sqlfs %s: %v\n", cmd, err)
		var ue *usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
}

// newFlagSet returns a FlagSet that reports errors instead of exiting or
// printing: the caller turns them into one line.
// Every command takes -config.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("sqlfs "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addConfigFlag(fs)
	return fs
}

// parseFlags parses args, then takes the value of every flag the command line
// did not set from the config file (see applyConfig). -h prints the
// command's flags to stdout and returns flag.ErrHelp; any other flag or
// config error becomes a usage error (one line, exit 2).
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	if err := parseCommandLine(fs, args, stdout); err != nil {
		return err
	}
	return applyConfig(fs)
}

// parseCommandLine is parseFlags without the config file.
func parseCommandLine(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stdout)
		fmt.Fprintf(stdout, "Usage of %s:\n", fs.Name())
		fs.PrintDefaults()
		return err
	} else if err != nil {
		return &usageError{msg: err.Error()}
	}
	return nil
}
