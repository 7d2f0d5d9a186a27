package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/control"
	"github.com/rockudp/rockudp/internal/relay"
	"github.com/rockudp/rockudp/internal/testwait"
	"github.com/rockudp/rockudp/tcprocks"
)

// transport is what a test's tunnel runs over.
type transport string

const (
	overPipe  transport = "pipe"  // net.Pipe: synchronous, in memory
	overTCP   transport = "tcp"   // a loopback TCP connection
	overRock  transport = "rock"  // a tcprocks rock on loopback
	overRelay transport = "relay" // a rock through internal/relay, for forced failures
)

var transports = []transport{overPipe, overTCP, overRock}

// rig is a client and a server tunnel end joined by a transport, and the
// UDP service the server sends to.
type rig struct {
	cli      *Client
	srv      *Server
	svc      *net.UDPConn // the --to service
	relay    *relay.Relay // overRelay only
	crock    *tcprocks.Conn
	srock    *tcprocks.Conn
	finished []chan struct{} // closed when each rock has finished
	clog     *logBuffer
	slog     *logBuffer
	closed   bool
}

// rigOptions tune newRig.
type rigOptions struct {
	cli, srv *Config
	sink     bool // the service only counts (and records) datagrams instead of echoing
	onSink   func(b []byte)
	udp6     bool   // the client's UDP socket is on [::1]
	listen   string // the client's UDP socket's address ("udp" network); overrides udp6
	// wrap, if set, wraps the client's end of the transport.
	wrap func(io.ReadWriteCloser) io.ReadWriteCloser
}

// newRig starts a tunnel over tr. Everything is closed at cleanup, and the
// rocks are waited for.
func newRig(t testing.TB, tr transport, o rigOptions) *rig {
	t.Helper()
	r := &rig{clog: &logBuffer{}, slog: &logBuffer{}}
	svc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_ = svc.SetReadBuffer(4 << 20)
	r.svc = svc
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		serve(svc, o.sink, o.onSink)
	}()
	t.Cleanup(func() { svc.Close(); wg.Wait() })

	a, b := transportPair(t, tr, r)
	if o.wrap != nil {
		a = o.wrap(a)
	}
	laddr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	if o.udp6 {
		laddr = &net.UDPAddr{IP: net.IPv6loopback}
	}
	if o.listen != "" {
		if laddr, err = net.ResolveUDPAddr("udp", o.listen); err != nil {
			t.Fatal(err)
		}
	}
	uc, err := net.ListenUDP("udp", laddr)
	if err != nil {
		a.Close()
		b.Close()
		t.Fatal(err)
	}
	ccfg, scfg := withLogger(o.cli, r.clog), withLogger(o.srv, r.slog)
	r.cli, err = NewClient(a, uc, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	r.srv, err = NewServer(b, svc.LocalAddr().String(), scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.close(t) })
	return r
}

// close closes both ends and waits for the rocks to finish.
func (r *rig) close(t testing.TB) {
	if r.closed {
		return
	}
	r.closed = true
	r.cli.Close()
	r.srv.Close()
	// State() is Closed as soon as Close is called; the rock then lingers
	// until the peer has everything, and reports the Closed event.
	for _, done := range r.finished {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("a rock did not finish 30s after Close")
		}
	}
}

func withLogger(c *Config, lb *logBuffer) *Config {
	var d Config
	if c != nil {
		d = *c
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return &d
}

// serve echoes (or, as a sink, swallows) datagrams until c is closed.
func serve(c *net.UDPConn, sink bool, onSink func([]byte)) {
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if sink {
			if onSink != nil {
				onSink(buf[:n])
			}
			continue
		}
		_, _ = c.WriteToUDPAddrPort(buf[:n], from)
	}
}

// transportPair returns the client's and the server's end of tr.
func transportPair(t testing.TB, tr transport, r *rig) (a, b io.ReadWriteCloser) {
	t.Helper()
	switch tr {
	case overPipe:
		return net.Pipe()
	case overTCP:
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ch := make(chan net.Conn, 1)
		go func() {
			c, _ := l.Accept()
			ch <- c
		}()
		a, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		b := <-ch
		if b == nil {
			t.Fatal("accept failed")
		}
		return a, b
	case overRock, overRelay:
		r.crock, r.srock, r.relay = rockPair(t, tr == overRelay)
		for _, c := range []*tcprocks.Conn{r.crock, r.srock} {
			done := make(chan struct{})
			var once sync.Once
			c.Subscribe(callbacks.HandlerFunc(func(e callbacks.Event) {
				if e.Kind == callbacks.Closed {
					once.Do(func() { close(done) })
				}
			}))
			r.finished = append(r.finished, done)
		}
		return r.crock, r.srock
	}
	t.Fatalf("unknown transport %q", tr)
	return nil, nil
}

// rockLog collects the rocks' debug logs, shown when a fault does not take.
var rockLog = &logBuffer{}

// rockPair dials a rock on loopback, through a fault-injecting relay if
// asked. The listener, relay and control client are closed at cleanup
// (after the tunnels, which own the rocks).
func rockPair(t testing.TB, viaRelay bool) (c, s *tcprocks.Conn, rl *relay.Relay) {
	t.Helper()
	cc, err := control.NewClient(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	fast := callbacks.Policy{HeartbeatInterval: 100 * time.Millisecond, MissedHeartbeats: 5}
	rlog := slog.New(slog.NewTextHandler(rockLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
	scfg := &tcprocks.Config{Policy: fast, InFlightLimit: 64 << 20, Logger: rlog.With("side", "server")}
	ccfg := &tcprocks.Config{Policy: fast, InFlightLimit: 64 << 20, ControlClient: cc, ProbeCache: edp.NewCache(time.Minute),
		Logger: rlog.With("side", "client")}
	l, err := tcprocks.Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	addr := l.Addr().String()
	if viaRelay {
		rl, err = relay.New(addr, &relay.Config{CutLinger: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rl.Close() })
		addr = rl.Addr().String()
	}
	ch := make(chan *tcprocks.Conn, 1)
	go func() {
		s, _ := l.AcceptConn()
		ch <- s
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err = tcprocks.Dial(ctx, "tcp", addr, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	s = <-ch
	if s == nil {
		c.Close()
		t.Fatal("accept failed")
	}
	if !c.Enhanced() || !s.Enhanced() {
		t.Fatal("rock is not enhanced")
	}
	return c, s, rl
}

// source is a local UDP application: one socket, one flow.
func source(t testing.TB, network string) *net.UDPConn {
	t.Helper()
	ip := net.IPv4(127, 0, 0, 1)
	if network == "udp6" {
		ip = net.IPv6loopback
	}
	c, err := net.ListenUDP(network, &net.UDPAddr{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(1 << 20)
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends b from src through the tunnel and returns the reply.
func roundTrip(t testing.TB, src *net.UDPConn, to net.Addr, b []byte) []byte {
	t.Helper()
	if _, err := src.WriteTo(b, to); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	_ = src.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := src.Read(buf)
	if err != nil {
		t.Fatalf("no reply to a %d-byte datagram: %v", len(b), err)
	}
	return buf[:n]
}

// waitFor polls cond until it is true or 30 s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testwait.Within(t, 30*time.Second, what, func() error {
		if !cond() {
			return errors.New("not yet")
		}
		return nil
	})
}

// logBuffer is a concurrency-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
