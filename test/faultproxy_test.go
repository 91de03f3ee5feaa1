package test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"
)

// faultProxy sits between sqlfs and the real S3 server and, while faulty,
// answers some requests with 503 SlowDown and cuts others off mid-request
// (a reset connection). It is the one fake in these tests: a real server
// does not fail on cue.
type faultProxy struct {
	ln       net.Listener
	faulty   atomic.Bool
	n        atomic.Int64
	injected atomic.Int64
}

func startFaultProxy(t *testing.T, backend string) *faultProxy {
	t.Helper()
	target, err := url.Parse(backend)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln}
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := p.n.Add(1)
		if p.faulty.Load() {
			switch n % 3 {
			case 0:
				p.injected.Add(1)
				io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>injected</Message></Error>`)
				return
			case 1:
				p.injected.Add(1)
				if hj, ok := w.(http.Hijacker); ok {
					conn, _, err := hj.Hijack()
					if err == nil {
						if tc, ok := conn.(*net.TCPConn); ok {
							tc.SetLinger(0) // RST, not FIN
						}
						conn.Close()
						return
					}
				}
			}
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return p
}

func (p *faultProxy) endpoint() string { return "http://" + p.ln.Addr().String() }

// TestReplicaS3Faults: with the S3 endpoint answering errors and resetting
// connections for a stretch of commits, every commit still arrives once the
// faults stop, and a restore from the replica equals the live database.
func TestReplicaS3Faults(t *testing.T) {
	s3 := startS3(t)
	proxy := startFaultProxy(t, s3.endpoint())
	t.Setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint())
	url := s3.url("faults")
	data, mnt := newDirs(t)
	m := startMount(t, data, mnt, "-replica", url)
	cli := startWALTable(t, m)
	proxy.faulty.Store(true)
	for i := range 60 {
		cli.exec(t, fmt.Sprintf("INSERT INTO t(v) VALUES('faulty %d');", i))
	}
	if !waitFor(20*time.Second, func() bool { return proxy.injected.Load() >= 5 }) {
		t.Fatalf("only %d faults injected", proxy.injected.Load())
	}
	proxy.faulty.Store(false)
	cli.close(t)
	want := lastTXID(t, data, "app.db")
	waitReplica(t, url, "app.db", want)
	checkReplicaRestore(t, url, dbState(t, m.Path("app.db")), "after injected faults")
	t.Logf("%d faults injected over %d requests", proxy.injected.Load(), proxy.n.Load())
	m.Stop()
}
