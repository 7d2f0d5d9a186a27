package tcprocks

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
)

func TestEventsAndLivePolicy(t *testing.T) {
	srvCfg, cliCfg := relayConfigs(t)
	var cev, sev eventLog
	cliCfg.Handler, srvCfg.Handler = &cev, &sev
	// Heartbeats that would take 1000 s to notice a failure...
	slow := callbacks.Policy{HeartbeatInterval: time.Second, MissedHeartbeats: 1000}
	cliCfg.Policy, srvCfg.Policy = slow, slow
	l := listen(t, srvCfg)
	r := newRelay(t, l)
	c, s := pair(t, l, r.Addr().String(), cliCfg)
	waitFor(t, "control channel", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.ch != nil })
	echo(t, c, s, []byte("x"))

	r.Blackhole(true)
	msg := make([]byte, 1000)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	// ... until the policy changes on the live rocks.
	fast := callbacks.Policy{HeartbeatInterval: 50 * time.Millisecond, MissedHeartbeats: 3}
	c.SetPolicy(fast)
	fast.ReconnectTimeout = 5 * time.Second // the server rock outlives the client below by that much
	s.SetPolicy(fast)
	fast.ReconnectTimeout = 0
	if got := c.Policy(); got.HeartbeatInterval != fast.HeartbeatInterval || got.ReconnectTimeout != callbacks.DefaultReconnectTimeout {
		t.Fatalf("policy %+v", got)
	}
	waitFor(t, "suspension", func() bool { return c.State() == Suspended })
	r.Blackhole(false)
	waitFor(t, "resumption", func() bool { return cev.count(callbacks.Resumed) == 1 })
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(s, got); err != nil {
		t.Fatal(err)
	}

	cev.mu.Lock()
	ev := append([]callbacks.Event(nil), cev.ev...)
	cev.mu.Unlock()
	if ev[0].Kind != callbacks.Suspended || ev[0].Cause == nil || ev[0].ID != c.ID() {
		t.Fatalf("first event %+v", ev[0])
	}
	last := ev[len(ev)-1]
	if last.Kind != callbacks.Resumed || last.Remote == nil || last.Downtime <= 0 || last.Replayed != int64(len(msg)) {
		t.Fatalf("last event %+v (replayed %d, want %d)", last, last.Replayed, len(msg))
	}
	for i, e := range ev[1 : len(ev)-1] {
		if e.Kind != callbacks.Reconnecting || e.Attempt != i+1 || e.Target == "" {
			t.Fatalf("event %d: %+v", i+1, e)
		}
	}

	// A live change of the reconnect timeout closes a suspended rock.
	r.Refuse(true)
	c.SetPolicy(callbacks.Policy{ReconnectTimeout: callbacks.NoTimeout})
	c.Suspend()
	waitFor(t, "suspension", func() bool { return c.State() == Suspended })
	c.SetPolicy(callbacks.Policy{ReconnectTimeout: 10 * time.Millisecond})
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, ErrReconnectTimeout) {
		t.Fatalf("read after timeout: %v", err)
	}
	waitFor(t, "closed event", func() bool { return cev.count(callbacks.Closed) == 1 })
	k := cev.kinds()
	if k[len(k)-2] != callbacks.TimedOut || k[len(k)-1] != callbacks.Closed {
		t.Fatalf("events %v", k)
	}
}
