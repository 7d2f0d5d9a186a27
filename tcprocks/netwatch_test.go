package tcprocks

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/internal/netmon"
)

// TestNetChanged feeds network changes to live rocks: the removal of another address does
// nothing, the removal of the data connection's local address suspends both ends' rocks at
// once (cause ErrAddressRemoved), and a new address makes the suspended client retry at once
// with its backoff reset.
func TestNetChanged(t *testing.T) {
	srvCfg, cliCfg := relayConfigs(t)
	l := listen(t, srvCfg)
	r := newRelay(t, l)
	var evs eventLog
	cliCfg.Handler = &evs
	c, s := pair(t, l, r.Addr().String(), cliCfg)
	local := addrIP(c.LocalAddr())
	if !local.IsValid() {
		t.Fatalf("local address %v", c.LocalAddr())
	}
	c.netChanged(&netmon.ChangeDelta{Removed: []netip.Addr{netip.MustParseAddr("192.0.2.99")}})
	if c.State() != Connected {
		t.Fatal("another address's removal suspended the rock")
	}
	r.Refuse(true) // keep it suspended
	c.netChanged(&netmon.ChangeDelta{Removed: []netip.Addr{local}})
	if c.State() != Suspended {
		t.Fatal("the removal of the local address did not suspend the rock")
	}
	waitFor(t, "the Suspended event", func() bool { return evs.count(callbacks.Suspended) == 1 })
	evs.mu.Lock()
	for _, e := range evs.ev {
		if e.Kind == callbacks.Suspended && (e.Cause == nil || !errors.Is(e.Cause, ErrAddressRemoved)) {
			t.Errorf("suspended because %v", e.Cause)
		}
	}
	evs.mu.Unlock()
	// Let the backoff grow, then announce a new address: an attempt follows at once.
	waitFor(t, "attempts with a grown backoff", func() bool { return evs.count(callbacks.Reconnecting) >= 8 })
	r.Refuse(false)
	before, start := evs.count(callbacks.Reconnecting), time.Now()
	c.netChanged(&netmon.ChangeDelta{Added: []netip.Addr{netip.MustParseAddr("192.0.2.100")}})
	waitFor(t, "resumption", func() bool { return c.State() == Connected })
	t.Logf("resumed %v after the change (backoff was %v), after %d more attempt(s)",
		time.Since(start).Round(time.Millisecond), callbacks.FastRetryMax, evs.count(callbacks.Reconnecting)-before)
	echo(t, c, s, []byte("after the change"))
	// The server's rock reacts to its own address too.
	s.netChanged(&netmon.ChangeDelta{Removed: []netip.Addr{addrIP(s.LocalAddr())}})
	waitFor(t, "the client to resume again", func() bool {
		return c.State() == Connected && s.State() == Connected && evs.count(callbacks.Resumed) == 2
	})
	echo(t, c, s, []byte("after the server's change"))
}
