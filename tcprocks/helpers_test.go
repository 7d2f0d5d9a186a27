package tcprocks

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/control"
)

// testClient returns a control client closed at the end of the test.
func testClient(t testing.TB) *control.Client {
	t.Helper()
	cl, err := control.NewClient(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// testConfigs returns a server and a client config for one test (own control client and
// probe cache) with fast heartbeats.
func testConfigs(t testing.TB) (srv, cli *Config) {
	// A loaded 2-core machine under -race can take longer than a loopback RTT between connect
	// and the client's first bytes; do not let EDP take such a client for an ordinary one.
	srv = &Config{EDP: &edp.Config{FirstByteWait: 2 * time.Second}}
	cli = &Config{ControlClient: testClient(t), ProbeCache: edp.NewCache(time.Minute)}
	return srv, cli
}

func listen(t testing.TB, cfg *Config) *Listener {
	t.Helper()
	l, err := Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); waitListener(t, l) })
	return l
}

// waitListener waits until a closed listener has shut down.
func waitListener(t testing.TB, l *Listener) {
	select {
	case <-l.stopped:
	case <-time.After(30 * time.Second):
		t.Errorf("listener still running 30s after Close (%d rocks)", func() int { l.mu.Lock(); defer l.mu.Unlock(); return len(l.rocks) }())
	}
}

// pair dials l and accepts; both rocks are closed at cleanup and waited for.
func pair(t testing.TB, l *Listener, addr string, cli *Config) (c, s *Conn) {
	t.Helper()
	type res struct {
		c   *Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := l.AcceptConn()
		ch <- res{s, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, "tcp", addr, cli)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() {
		c.Close()
		r.c.Close()
		waitDone(t, c)
		waitDone(t, r.c)
	})
	return c, r.c
}

// waitDone waits until a rock has finished (its linger included).
func waitDone(t testing.TB, c *Conn) {
	if c.plain != nil {
		return
	}
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		c.mu.Lock()
		t.Errorf("rock %x (role %d) not finished 20s after Close: state %v sent %d written %d acked %d received %d fin %d@%d peerFin %d@%d ch %v",
			c.id[:4], c.role, c.state, c.sent, c.written, c.acked, c.received, c.localFin, c.finAt, c.peerFin, c.peerFinAt, c.ch != nil)
		c.mu.Unlock()
		return // do not hang on its goroutines: the test has failed
	}
	c.wg.Wait()
}

// waitFor polls cond until it is true or 30 s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var _ net.Conn = (*Conn)(nil)

// waitForLong is waitFor with a given limit.
func waitForLong(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// countResumed makes cfg count Resumed events.
func countResumed(cfg *Config) *atomic.Int64 {
	var n atomic.Int64
	cfg.Handler = callbacks.HandlerFunc(func(e callbacks.Event) {
		if e.Kind == callbacks.Resumed {
			n.Add(1)
		}
	})
	return &n
}
