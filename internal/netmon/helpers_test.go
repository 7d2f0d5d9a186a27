package netmon

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitTimeout bounds every wait for an event. It is generous: the machine
// is shared and slow; only a broken monitor takes that long.
const waitTimeout = 20 * time.Second

// fakeNet is a network described as the kernel would dump it.
type fakeNet struct {
	links  []linkMsg
	addrs  []addrMsg
	routes []routeMsg
}

// dump encodes n as the replies to link, address and route dumps.
func (n *fakeNet) dump() []byte {
	var b []byte
	for _, l := range n.links {
		b = appendLink(b, rtmNewLink, nlmFMulti, 1, l)
	}
	b = appendDone(b, 1)
	for _, a := range n.addrs {
		b = appendAddr(b, rtmNewAddr, nlmFMulti, 2, a)
	}
	b = appendDone(b, 2)
	for _, r := range n.routes {
		b = appendRoute(b, rtmNewRoute, nlmFMulti, 3, r)
	}
	return appendDone(b, 3)
}

const upFlags = iffUp | iffRunning | iffBroadcast | iffMulticast

// baseNet is lo and eth0 (up) with one address each and an IPv4 default route.
func baseNet() *fakeNet {
	return &fakeNet{
		links: []linkMsg{
			{Index: 1, Name: "lo", Flags: iffUp | iffRunning | iffLoopback},
			{Index: 2, Name: "eth0", Flags: upFlags},
		},
		addrs: []addrMsg{
			{Index: 1, Prefix: netip.MustParsePrefix("127.0.0.1/8"), Scope: 254},
			{Index: 2, Prefix: netip.MustParsePrefix("192.0.2.2/24")},
		},
		routes: []routeMsg{
			{Family: afInet, Table: rtTableMain, Type: rtnUnicast, Gateway: netip.MustParseAddr("192.0.2.1"), Oif: 2},
		},
	}
}

// fakeOS is an osMon fed by the test: Receive returns for each relevant
// datagram sent on events, State parses the current fake dump. This runs
// the same parsing code as the Linux monitor, over bytes the test built.
type fakeOS struct {
	events     chan []byte
	errs       chan error
	done       chan struct{}
	closeOnce  sync.Once
	stateCalls atomic.Int32

	mu   sync.Mutex
	dump []byte
}

func newFakeOS(n *fakeNet) *fakeOS {
	return &fakeOS{events: make(chan []byte), errs: make(chan error), done: make(chan struct{}), dump: n.dump()}
}

func (f *fakeOS) Receive() (urgent bool, err error) {
	for {
		select {
		case <-f.done:
			return false, net.ErrClosed
		case err := <-f.errs:
			return false, err
		case b := <-f.events:
			if relevant, urgent := classify(b); relevant {
				return urgent, nil
			}
		}
	}
}

func (f *fakeOS) State() (State, error) {
	f.stateCalls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	return stateFromDump(f.dump)
}

func (f *fakeOS) Close() error {
	f.closeOnce.Do(func() { close(f.done) })
	return nil
}

// set makes n the network State reads from now on.
func (f *fakeOS) set(n *fakeNet) {
	f.mu.Lock()
	f.dump = n.dump()
	f.mu.Unlock()
}

// send delivers a datagram "from the kernel" to Receive.
func (f *fakeOS) send(t *testing.T, b []byte) {
	t.Helper()
	select {
	case f.events <- b:
	case <-time.After(waitTimeout):
		t.Fatal("monitor does not read events")
	}
}

// startFake returns a started Monitor on a fakeOS showing n, closed when
// the test ends.
func startFake(t *testing.T, n *fakeNet, cfg *Config) (*Monitor, *fakeOS) {
	t.Helper()
	f := newFakeOS(n)
	c := cfg.populate()
	if cfg == nil || cfg.Logger == nil {
		c.Logger = testLogger(t)
	}
	m, err := newMonitor(c, f, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	return m, f
}

// recorder is a subscriber that keeps every delta with its arrival time.
type recorder struct {
	ch chan timedDelta
}

type timedDelta struct {
	at time.Time
	d  *ChangeDelta
}

func record(t *testing.T, m *Monitor) *recorder {
	r := &recorder{ch: make(chan timedDelta, 4096)}
	unregister := m.RegisterChangeCallback(func(d *ChangeDelta) {
		select {
		case r.ch <- timedDelta{time.Now(), d}:
		default:
			t.Errorf("recorder full")
		}
	})
	t.Cleanup(unregister)
	return r
}

// next returns the next delta.
func (r *recorder) next(t *testing.T) timedDelta {
	t.Helper()
	select {
	case td := <-r.ch:
		return td
	case <-time.After(waitTimeout):
		t.Fatal("no change reported")
		return timedDelta{}
	}
}

// until returns the deltas up to and including the first one for which
// done is true.
func (r *recorder) until(t *testing.T, done func(*ChangeDelta) bool) []timedDelta {
	t.Helper()
	var got []timedDelta
	for {
		td := r.next(t)
		got = append(got, td)
		if done(td.d) {
			return got
		}
	}
}

// barrier injects an event and returns the deltas delivered before the
// injected one: every change made before barrier was called.
func (r *recorder) barrier(t *testing.T, m *Monitor) []timedDelta {
	t.Helper()
	m.InjectEvent()
	got := r.until(t, func(d *ChangeDelta) bool { return d.Injected })
	last := got[len(got)-1].d
	if last.changed() {
		return got // the injected delta carries changes too
	}
	return got[:len(got)-1]
}

// count returns how many deltas list ip in Added and in Removed.
func count(tds []timedDelta, ip netip.Addr) (added, removed int) {
	for _, td := range tds {
		if slices.Contains(td.d.Added, ip) {
			added++
		}
		if slices.Contains(td.d.Removed, ip) {
			removed++
		}
	}
	return added, removed
}

// testLogger sends the monitor's logs to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(&testHandler{t: t})
}

// handlerOf returns the testHandler behind a testLogger.
func handlerOf(l *slog.Logger) *testHandler { return l.Handler().(*testHandler) }

type testHandler struct {
	t    *testing.T
	mu   sync.Mutex
	msgs []string
}

func (h *testHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *testHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Message)
	h.mu.Unlock()
	if r.Level < slog.LevelInfo && !testing.Verbose() {
		return nil
	}
	args := []any{r.Level, r.Message}
	r.Attrs(func(a slog.Attr) bool { args = append(args, a); return true })
	h.t.Log(args...)
	return nil
}
func (h *testHandler) WithAttrs(as []slog.Attr) slog.Handler { return h }
func (h *testHandler) WithGroup(string) slog.Handler         { return h }

// logged reports whether a message containing s was logged.
func (h *testHandler) logged(s string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.ContainsFunc(h.msgs, func(m string) bool { return strings.Contains(m, s) })
}

var errTest = errors.New("test error")
