package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rockudp/rockudp/edp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// run executes the CLI with args in-process and returns what it wrote.
func run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRootCmd(&out, &errb)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = root.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

func TestVersion(t *testing.T) {
	out, _, err := run(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "rockudp ") || !strings.Contains(out, "go1.") {
		t.Fatalf("version output %q", out)
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"version", "--log-level", "loud"}, `--log-level "loud"`},
		{[]string{"version", "--log-format", "xml"}, `--log-format "xml"`},
		{[]string{"edp", "probe"}, "accepts 1 arg(s), received 0"},
		{[]string{"edp", "probe", "127.0.0.1:1", "--timeout", "0s"}, "--timeout must be positive"},
		{[]string{"edp", "probe", "127.0.0.1:1", "--bogus"}, "unknown flag: --bogus"},
	} {
		_, _, err := run(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}

func TestEDPProbeEnhanced(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := edp.NewListener(inner, &edp.Config{Enhancements: []edp.Enhancement{
		{Name: "rocks", Version: 1}, {Name: "zstd", Version: 2},
	}})
	t.Cleanup(func() { l.Close() })
	go func() { // drain: probes never arrive here, but be a well-behaved server
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	out, _, err := run(t, "edp", "probe", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if out != "enhanced rocks/1 zstd/2\n" {
		t.Fatalf("got %q, want %q", out, "enhanced rocks/1 zstd/2\n")
	}
}

func TestEDPProbeOrdinaryHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	out, _, err := run(t, "edp", "probe", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "ordinary ") {
		t.Fatalf("got %q, want ordinary", out)
	}
}

// TestEDPProbeOrdinaryReasons: each way an ordinary server can answer the probe is
// printed with its reason, and the command still exits 0.
func TestEDPProbeOrdinaryReasons(t *testing.T) {
	for _, tc := range []struct {
		want   string
		handle func(c *net.TCPConn)
	}{
		{"ordinary data\n", func(c *net.TCPConn) { c.Write([]byte("SSH-2.0-OpenSSH_9.2\r\n")); c.Close() }},
		{"ordinary closed\n", func(c *net.TCPConn) { c.Close() }},
		{"ordinary reset\n", func(c *net.TCPConn) { io.Copy(io.Discard, c); c.SetLinger(0); c.Close() }},
		{"ordinary timeout\n", nil}, // silent: holds the connection open until the test ends
	} {
		t.Run(strings.Fields(tc.want)[1], func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			quit := make(chan struct{})
			t.Cleanup(func() { ln.Close(); close(quit); wg.Wait() })
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						if tc.handle == nil {
							<-quit
							c.Close()
							return
						}
						tc.handle(c.(*net.TCPConn))
					}()
				}
			}()
			out, _, err := run(t, "edp", "probe", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			if out != tc.want {
				t.Fatalf("got %q, want %q", out, tc.want)
			}
		})
	}
}

func TestEDPProbeUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	_, _, err = run(t, "edp", "probe", addr)
	if err == nil || !strings.Contains(err.Error(), "cannot probe "+addr) {
		t.Fatalf("got %v, want a clear error naming %s", err, addr)
	}
}

// TestDemoRuns runs the README's main command as a newcomer would: it must stream both
// ways through every scripted failure and exit 0 with both streams exact.
func TestDemoRuns(t *testing.T) {
	out, _, err := run(t, "demo")
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out)
	}
	for _, want := range []string{"client → service", "service → client", "failures survived: 4 of 4",
		"Every byte arrived exactly once"} {
		if !strings.Contains(out, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "exact") < 2 || strings.Contains(out, "MISMATCH") {
		t.Fatalf("streams not exact:\n%s", out)
	}
}

func TestDemoBadFlags(t *testing.T) {
	for _, args := range [][]string{{"demo", "--rate", "0"}, {"demo", "--misses", "0"}} {
		if _, _, err := run(t, args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
