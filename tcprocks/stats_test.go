package tcprocks

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
)

// queryLocator records the queries it is asked.
type queryLocator struct {
	mu sync.Mutex
	q  []callbacks.Query
}

func (l *queryLocator) Locate(_ context.Context, q callbacks.Query) ([]string, error) {
	l.mu.Lock()
	l.q = append(l.q, q)
	l.mu.Unlock()
	return nil, nil
}

func (l *queryLocator) names() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n []string
	for _, q := range l.q {
		n = append(n, q.Name)
	}
	return n
}

// TestNames: each end's Config.Name reaches the other end's PeerName, Stats and Locator query.
func TestNames(t *testing.T) {
	srvCfg, cliCfg := relayConfigs(t)
	srvCfg.Name, cliCfg.Name = "server.rocks.example", "laptop-7.rocks.example"
	loc := &queryLocator{}
	cliCfg.Locator = loc
	l := listen(t, srvCfg)
	r := newRelay(t, l)
	c, s := pair(t, l, r.Addr().String(), cliCfg)
	if c.PeerName() != srvCfg.Name || s.PeerName() != cliCfg.Name {
		t.Fatalf("peer names: client sees %q, server sees %q", c.PeerName(), s.PeerName())
	}
	if got := s.Stats().PeerName; got != cliCfg.Name {
		t.Fatalf("server Stats.PeerName %q", got)
	}
	r.Refuse(true)
	r.Reset()
	waitFor(t, "a locator query", func() bool { return len(loc.names()) > 0 })
	if n := loc.names()[0]; n != srvCfg.Name {
		t.Fatalf("locator asked about %q, want %q", n, srvCfg.Name)
	}
	r.Refuse(false)
	echo(t, c, s, []byte("after"))

	// Without names: empty.
	srv2, cli2 := testConfigs(t)
	l2 := listen(t, srv2)
	c2, s2 := pair(t, l2, l2.Addr().String(), cli2)
	if c2.PeerName() != "" || s2.PeerName() != "" {
		t.Fatalf("names without Config.Name: %q %q", c2.PeerName(), s2.PeerName())
	}
}

func TestBadNames(t *testing.T) {
	long := ""
	for range 5 {
		long += "a123456789012345678901234567890123456789012345678901234567890." // 5 × 62
	}
	for _, name := range []string{"-a.example", "a-.example", "a..example", "a.example..", ".", "a b", "é.example", long[:len(long)-1]} {
		if err := checkName(name); err == nil {
			t.Errorf("%q accepted", name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := Dial(ctx, "tcp", "127.0.0.1:1", &Config{Name: name})
		cancel()
		if err == nil {
			t.Errorf("Dial with name %q: no error", name)
		}
	}
	for _, name := range []string{"a", "A-1.example", "server.roam.test.", "_rocks._tcp.example", long[:253]} {
		if err := checkName(name); err != nil && len(name) <= MaxNameLen {
			t.Errorf("%q refused: %v", name, err)
		}
	}
	if _, err := Listen("tcp", "127.0.0.1:0", &Config{Name: "bad..name"}); err == nil {
		t.Error("Listen with a bad name: no error")
	}
}

// TestStats: counters, addresses and suspension figures of Stats, and Listener.Conns.
func TestStats(t *testing.T) {
	srvCfg, cliCfg := relayConfigs(t)
	l := listen(t, srvCfg)
	r := newRelay(t, l)
	c, s := pair(t, l, r.Addr().String(), cliCfg)
	before := time.Now()
	echo(t, c, s, make([]byte, 1000))
	cs, ss := c.Stats(), s.Stats()
	if cs.BytesSent != 1000 || cs.BytesReceived != 1000 || ss.BytesSent != 1000 || ss.BytesReceived != 1000 {
		t.Fatalf("byte counts: client %+v server %+v", cs, ss)
	}
	if cs.Role != callbacks.Client || ss.Role != callbacks.Server || cs.ID != c.ID() || ss.ID != c.ID() || !cs.Enhanced {
		t.Fatalf("identity: client %+v server %+v", cs, ss)
	}
	if cs.State != Connected || cs.LocalAddr == nil || cs.RemoteAddr.String() != r.Addr().String() || cs.Established.After(before) {
		t.Fatalf("client stats %+v", cs)
	}
	if cs.Suspensions != 0 || cs.LastDowntime != 0 {
		t.Fatalf("suspensions before any: %+v", cs)
	}
	waitFor(t, "acknowledgement", func() bool { return c.Stats().InFlight == 0 })
	if got := l.Conns(); len(got) != 1 || got[0] != s {
		t.Fatalf("Listener.Conns %v, want [%p]", got, s)
	}

	// Bytes held in the relay are not acknowledged.
	r.Blackhole(true)
	if _, err := c.Write(make([]byte, 500)); err != nil {
		t.Fatal(err)
	}
	if got := c.Stats().InFlight; got != 500 {
		t.Fatalf("in flight %d, want 500", got)
	}
	r.Refuse(true)
	r.Reset()
	r.Blackhole(false)
	waitFor(t, "suspension", func() bool { return c.State() == Suspended })
	cs = c.Stats()
	if cs.State != Suspended || cs.LocalAddr != nil || cs.RemoteAddr.String() != r.Addr().String() || cs.InFlight != 500 || cs.Suspensions != 1 {
		t.Fatalf("suspended client stats %+v", cs)
	}
	r.Refuse(false)
	waitFor(t, "resumption", func() bool { return c.State() == Connected })
	cs = c.Stats()
	if cs.LastDowntime <= 0 || cs.Suspensions != 1 || cs.LocalAddr == nil {
		t.Fatalf("resumed client stats %+v", cs)
	}
	s.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(s, make([]byte, 500)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replayed bytes acknowledged", func() bool { return c.Stats().InFlight == 0 && s.Stats().BytesReceived == 1500 })

	// Plain TCP: zero counters, not enhanced.
	if st := (&Conn{plain: c.conn}).Stats(); st.Enhanced {
		t.Fatalf("plain Stats %+v", st)
	}
}
