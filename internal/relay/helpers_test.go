package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// patience bounds every wait for an event in these tests.
const patience = 20 * time.Second

// quiet is how long a test watches for traffic that must not arrive. It only
// ever lets a broken relay pass by luck, never fails a working one.
const quiet = 300 * time.Millisecond

func newRelay(t testing.TB, target string, cfg *Config) *Relay {
	t.Helper()
	r, err := New(target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// server stands for the target: it accepts TCP connections and hands them
// to the test, and echoes UDP on the same port (see udpEcho).
type server struct {
	ln    *net.TCPListener
	conns chan *net.TCPConn
}

func newServer(t testing.TB) *server {
	t.Helper()
	ln, pc, err := listenTwins("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpEcho(t, pc)
	s := &server{ln: ln, conns: make(chan *net.TCPConn, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := s.ln.AcceptTCP()
			if err != nil {
				return
			}
			s.conns <- c
		}
	}()
	t.Cleanup(func() {
		s.ln.Close()
		<-done
		close(s.conns)
		for c := range s.conns {
			c.Close()
		}
	})
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

// accept waits up to d for the next connection; nil if none came.
func (s *server) accept(t testing.TB, d time.Duration) *net.TCPConn {
	t.Helper()
	select {
	case c := <-s.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(d):
		return nil
	}
}

func dial(t testing.TB, addr net.Addr) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// connect opens a pair through r to s and checks that it carries bytes.
func connect(t testing.TB, r *Relay, s *server) (client, server *net.TCPConn) {
	t.Helper()
	client = dial(t, r.Addr())
	server = s.accept(t, patience)
	if server == nil {
		t.Fatal("server saw no connection through the relay")
	}
	exchange(t, client, server, "ping")
	exchange(t, server, client, "pong")
	return client, server
}

// exchange writes msg on a and expects it on b.
func exchange(t testing.TB, a, b net.Conn, msg string) {
	t.Helper()
	if _, err := a.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	expect(t, b, msg)
}

func expect(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(patience))
	defer c.SetReadDeadline(time.Time{})
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read %q: %v", msg, err)
	}
	if string(got) != msg {
		t.Fatalf("read %q, want %q", got, msg)
	}
}

// expectSilence checks that nothing arrives on c for the quiet period.
func expectSilence(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(quiet))
	defer c.SetReadDeadline(time.Time{})
	var b [64]byte
	n, err := c.Read(b[:])
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("during silence: read %q, %v", b[:n], err)
	}
}

// readErr reads from c until an error and returns it (io.EOF for a FIN).
func readErr(t testing.TB, c net.Conn) error {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(patience))
	_, err := io.Copy(io.Discard, c)
	if err == nil {
		err = io.EOF
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("connection stayed open")
	}
	return err
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// udpEcho answers every datagram with the payload followed by "|" and the
// sender's address as the server saw it.
func udpEcho(t testing.TB, pc *net.UDPConn) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			reply := append(buf[:n:n], "|"+from.String()...)
			pc.WriteToUDPAddrPort(reply, from)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
}

func dialUDP(t testing.TB, addr net.Addr) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, addr.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// udpRoundTrip sends msg and waits up to d for its echo; it returns the
// upstream address the server saw, or "" if no echo came.
func udpRoundTrip(t testing.TB, c *net.UDPConn, msg string, d time.Duration) string {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("udp write: %v", err)
	}
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	for {
		n, err := c.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return ""
			}
			t.Fatalf("udp read: %v", err)
		}
		got := string(buf[:n])
		if len(got) > len(msg) && got[:len(msg)+1] == msg+"|" {
			return got[len(msg)+1:]
		}
		// A late echo of an earlier datagram: keep reading.
	}
}
