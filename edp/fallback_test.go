package edp

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// plainServer runs an ordinary (unenhanced) TCP server whose behaviour on each
// accepted connection is handle; it counts connections.
type plainServer struct {
	ln       net.Listener
	accepted atomic.Int32
	mu       sync.Mutex
	conns    []net.Conn
	wg       sync.WaitGroup
}

func startPlain(t testing.TB, handle func(*net.TCPConn)) *plainServer {
	t.Helper()
	s := &plainServer{ln: listenTCP(t)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		s.ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

const banner = "220 smtp.example ESMTP ready\r\n"

func TestFallback(t *testing.T) {
	probeMin := 100 * time.Millisecond
	tests := []struct {
		name   string
		handle func(*net.TCPConn)
		want   Reason
		check  func(t *testing.T, c *Conn) // on the fresh ordinary conn
	}{
		{"closed", func(c *net.TCPConn) { c.Close() }, ReasonClosed, func(t *testing.T, c *Conn) {
			if b, err := io.ReadAll(c); len(b) != 0 || err != nil {
				t.Errorf("read %q, %v; want EOF", b, err)
			}
		}},
		{"reset", func(c *net.TCPConn) {
			io.Copy(io.Discard, c) // reset in answer to the half-close
			c.SetLinger(0)
			c.Close()
		}, ReasonReset, roundTripSilent},
		{"banner", func(c *net.TCPConn) {
			c.Write([]byte(banner))
			io.Copy(io.Discard, c)
			c.Close()
		}, ReasonData, func(t *testing.T, c *Conn) {
			got := make([]byte, len(banner))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != banner {
				t.Errorf("banner on the fresh conn: %q, %v", got, err)
			}
		}},
		{"silent", func(c *net.TCPConn) { io.Copy(io.Discard, c) }, ReasonTimeout, func(t *testing.T, c *Conn) {
			roundTripSilent(t, c)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startPlain(t, tt.handle)
			cache := NewCache(0)
			cfg := &Config{Cache: cache, ProbeTimeoutMin: probeMin, ProbeTimeoutMax: probeMin,
				Enhancements: []Enhancement{{Name: "rocks", Version: 1}}}
			start := time.Now()
			c, err := Dial(testCtx(t), "tcp", srv.ln.Addr().String(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tt.want == ReasonTimeout && time.Since(start) < probeMin {
				t.Errorf("silent server given up after %v, before the probe timeout %v", time.Since(start), probeMin)
			}
			r := c.Result()
			if r.Enhanced || r.Reason != tt.want || r.Cached {
				t.Fatalf("result %+v, want ordinary, reason %v", r, tt.want)
			}
			if c.connects != 2 {
				t.Errorf("%d connects; want a fresh connection after the probe", c.connects)
			}
			waitFor(t, "the server to accept the fresh connection", func() bool { return srv.accepted.Load() == 2 })
			if tt.check != nil {
				tt.check(t, c)
			}
			// Negative cache: the next Dial connects once, probe skipped.
			c2, err := Dial(testCtx(t), "tcp", srv.ln.Addr().String(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			if r := c2.Result(); r.Enhanced || !r.Cached || r.Reason != tt.want {
				t.Errorf("cached result %+v", r)
			}
			if c2.connects != 1 || c2.roundTrips != 0 {
				t.Errorf("negative cache hit: %d connects, %d round trips", c2.connects, c2.roundTrips)
			}
		})
	}
}

// roundTripSilent checks that a conn to the silent server is open and writable and
// that nothing was read from it.
func roundTripSilent(t *testing.T, c *Conn) {
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Error(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read from a silent server: %v", err)
	}
}

func TestDialUnreachable(t *testing.T) {
	ln := listenTCP(t)
	addr := ln.Addr().String()
	ln.Close()
	if _, err := Dial(testCtx(t), "tcp", addr, nil); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	if _, err := Probe(testCtx(t), "tcp", addr, nil); err == nil {
		t.Fatal("probe of a closed port succeeded")
	}
	if _, err := Dial(testCtx(t), "udp", addr, nil); err == nil {
		t.Fatal("dial udp succeeded")
	}
}
