package udpnotify

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/testwait"
	"github.com/rockudp/rockudp/tcprocks"
)

// waitFor is how long a test waits for something that should happen in milliseconds: long,
// because a loaded 2-core machine running -race can be slow, and a pass never waits it out.
const waitFor = 20 * time.Second

// recorder collects a session's events.
type recorder struct {
	mu      sync.Mutex
	events  []callbacks.Event
	changed chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) HandleEvent(e callbacks.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func (r *recorder) all() []callbacks.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// wait waits until an event of kind k arrives (counting from index from) and returns it
// with its index.
func (r *recorder) wait(t testing.TB, k callbacks.Kind, from int) (callbacks.Event, int) {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		r.mu.Lock()
		for i := from; i < len(r.events); i++ {
			if r.events[i].Kind == k {
				e := r.events[i]
				r.mu.Unlock()
				return e, i
			}
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no %v event within %v; events: %v", k, waitFor, kinds(r.all()))
		}
	}
}

func kinds(es []callbacks.Event) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Kind.String())
	}
	return out
}

// eventually polls cond until it holds or waitFor passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testwait.Within(t, waitFor, what, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

var errNotYet = errors.New("not yet")

// clientRockConfig returns a client rock configuration with the tests' control client and a
// probe cache of its own.
func clientRockConfig(t testing.TB) *tcprocks.Config {
	t.Helper()
	return &tcprocks.Config{ControlClient: testControl, ProbeCache: edp.NewCache(time.Minute),
		Policy: callbacks.Policy{HeartbeatInterval: 100 * time.Millisecond, MissedHeartbeats: 5}}
}

// listen starts a rock listener on ip; it is closed at cleanup.
func listen(t testing.TB, ip string) *tcprocks.Listener {
	t.Helper()
	// A session's client speaks first, so the listener may wait long for the first byte before
	// it takes a connection for plain TCP: a loaded machine cannot then make a rock look plain.
	l, err := tcprocks.Listen("tcp", net.JoinHostPort(ip, "0"),
		&tcprocks.Config{Policy: callbacks.Policy{HeartbeatInterval: 100 * time.Millisecond, MissedHeartbeats: 5},
			EDP: &edp.Config{FirstByteWait: waitFor}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// accept runs the sending side of the next session on l in the background.
func accept(t testing.TB, l *tcprocks.Listener, udp *net.UDPConn, cfg *Config) <-chan *Session {
	ch := make(chan *Session, 1)
	go func() {
		rock, err := l.AcceptConn()
		if err != nil {
			ch <- nil
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		s, err := Server(ctx, rock, udp, cfg)
		if err != nil {
			t.Errorf("Server: %v", err)
		}
		ch <- s
	}()
	return ch
}

// pair makes a session on loopback: the sending side on listenIP with sudp, the receiving
// side with cudp (nil sockets: new ones). Both end at cleanup.
func pair(t testing.TB, listenIP string, sudp, cudp *net.UDPConn, scfg, ccfg *Config) (srv, cli *Session) {
	t.Helper()
	l := listen(t, listenIP)
	ch := accept(t, l, sudp, scfg)
	var c Config
	if ccfg != nil {
		c = *ccfg
	}
	c.Rock = clientRockConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cli, err := Dial(ctx, l.Addr().String(), cudp, &c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	srv = <-ch
	if srv == nil {
		t.Fatal("no sending side")
	}
	t.Cleanup(func() { srv.Close() })
	return srv, cli
}

func udpOn(t testing.TB, network, addr string) *net.UDPConn {
	t.Helper()
	a, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP(network, a)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
