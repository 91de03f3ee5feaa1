package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sqlfs/sqlfs/restore"
)

// showProgress prints a restore's progress on w, one line redrawn in place
// a few times a second, when w is a terminal; otherwise it prints nothing.
// The returned stop ends the display and clears the line.
func showProgress(w io.Writer, p *restore.Progress) (stop func()) {
	if p == nil || !isTerminal(w) {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		start := time.Now()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-tick.C:
				fmt.Fprint(w, "\r\033[K"+progressLine(p, time.Since(start)))
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// progressLine is "12.0 MiB / 1.0 GiB, 3/120 files, 45.6 MiB/s, ETA 22s".
func progressLine(p *restore.Progress, elapsed time.Duration) string {
	bytes, total := p.Bytes.Load(), p.TotalBytes.Load()
	line := fmt.Sprintf("%s / %s, %d/%d files", sizeString(bytes), sizeString(total), p.Files.Load(), p.TotalFiles.Load())
	if secs := elapsed.Seconds(); secs > 0 && bytes > 0 {
		rate := float64(bytes) / secs
		line += fmt.Sprintf(", %s/s", sizeString(int64(rate)))
		if left := total - bytes; left > 0 {
			line += fmt.Sprintf(", ETA %s", time.Duration(float64(left)/rate*float64(time.Second)).Round(time.Second))
		}
	}
	return line
}

func sizeString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
