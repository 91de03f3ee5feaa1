package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

// app is the application `mount -exec` runs as sqlfs's child once the
// mount is up. SIGINT and SIGTERM sent to sqlfs go to the app; sqlfs stops
// (unmount, pending uploads flushed) when the app has exited, and exits with
// the app's exit code.
type app struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the app has exited
	err  error         // from Wait; valid once done is closed
	sigs chan os.Signal
}

// startApp runs `sh -c command` with sqlfs's stdin, stdout and stderr.
func startApp(command string, stdout, stderr io.Writer) (*app, error) {
	a := &app{cmd: exec.Command("sh", "-c", command), done: make(chan struct{}), sigs: make(chan os.Signal, 4)}
	a.cmd.Stdin, a.cmd.Stdout, a.cmd.Stderr = os.Stdin, stdout, stderr
	signal.Notify(a.sigs, syscall.SIGINT, syscall.SIGTERM)
	if err := a.cmd.Start(); err != nil {
		signal.Stop(a.sigs)
		return nil, fmt.Errorf("-exec %q: %w", command, err)
	}
	go func() {
		a.err = a.cmd.Wait()
		signal.Stop(a.sigs)
		close(a.done)
	}()
	go func() {
		for {
			select {
			case sig := <-a.sigs:
				a.cmd.Process.Signal(sig)
			case <-a.done:
				return
			}
		}
	}()
	return a, nil
}

// stop asks the app to end (SIGTERM) and waits for it: the mount went away
// under it.
func (a *app) stop() {
	select {
	case <-a.done:
		return
	default:
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	<-a.done
}

// exitCode is the app's exit status as a shell reports it: its code, or
// 128 plus the signal that killed it.
func (a *app) exitCode() int {
	var ee *exec.ExitError
	if !errors.As(a.err, &ee) {
		if a.err != nil {
			return 1
		}
		return 0
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ee.ExitCode()
}

// runApp runs the -exec app while the mount is up, and takes the mount down
// when the app exits. Signals to sqlfs go to the app, whose exit ends the
// mount; a mount taken away from outside stops the app.
func runApp(command string, server interface{ Unmount() error }, mnt string, done <-chan struct{}, stdout, stderr io.Writer, log *slog.Logger) error {
	a, err := startApp(command, stdout, stderr)
	if err != nil {
		unmount(server, mnt, done, log)
		return err
	}
	select {
	case <-a.done:
		log.Info("application exited; unmounting", "code", a.exitCode())
		unmount(server, mnt, done, log)
	case <-done:
		log.Warn("unmounted from outside; stopping the application", "mountpoint", mnt)
		a.stop()
	}
	if code := a.exitCode(); code != 0 {
		return &exitCodeError{code: code}
	}
	return nil
}

// exitCodeError ends sqlfs with an exit code and no message: the app's own
// output has said what happened.
type exitCodeError struct{ code int }

func (e *exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }
