package edp

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testCtx returns a context with a generous deadline: a hang fails the test instead of
// stalling the run, and no test asserts that anything is fast.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func listenTCP(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// app runs a server application on an EDP listener: handle runs for every accepted
// connection. Cleanup closes the listener and every accepted connection and waits.
type app struct {
	l     *Listener
	mu    sync.Mutex
	conns []*Conn
	wg    sync.WaitGroup
}

func startApp(t testing.TB, cfg *Config, handle func(*Conn)) *app {
	t.Helper()
	a := &app{l: NewListener(listenTCP(t), cfg)}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			c, err := a.l.AcceptConn()
			if err != nil {
				return
			}
			a.mu.Lock()
			a.conns = append(a.conns, c)
			a.mu.Unlock()
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		a.l.Close()
		a.mu.Lock()
		for _, c := range a.conns {
			c.Close()
		}
		a.mu.Unlock()
		a.wg.Wait()
	})
	return a
}

func (a *app) addr() string { return a.l.Addr().String() }

// echo copies what it reads back until EOF.
func echo(c *Conn) {
	io.Copy(c, c)
	c.Close()
}

// roundTrip writes msg on c and reads it back.
func roundTrip(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, []byte(msg)) {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
}

// waitFor polls cond until it holds or the test's generous deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// serverCfg is a server Config for tests that are not about FirstByteWait: a generous
// wait, so a test client delayed by a loaded machine is never misclassified.
func serverCfg(enh ...Enhancement) *Config {
	return &Config{Enhancements: enh, FirstByteWait: 5 * time.Second}
}

func errDeadline() error { return os.ErrDeadlineExceeded }
