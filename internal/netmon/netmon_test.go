package netmon

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	v4b  = netip.MustParsePrefix("192.0.2.77/24")
	v6   = netip.MustParsePrefix("2001:db8:1::2/64")
	eth0 = 2
)

// newAddrEvent is the datagram the kernel sends when p is added to eth0.
func newAddrEvent(p netip.Prefix) []byte {
	return appendAddr(nil, rtmNewAddr, 0, 0, addrMsg{Index: uint32(eth0), Prefix: p})
}

// addOneByOne adds count addresses (192.0.2.100, ...) to eth0, each in its
// own change: it waits for r to see one before adding the next.
func addOneByOne(t *testing.T, n *fakeNet, f *fakeOS, r *recorder, count int) []netip.Addr {
	var added []netip.Addr
	for i := range count {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i)}), 24)
		added = append(added, p.Addr())
		n.addrs = append(n.addrs, addrMsg{Index: 2, Prefix: p})
		f.set(n)
		f.send(t, newAddrEvent(p))
		r.until(t, func(d *ChangeDelta) bool { return slices.Contains(d.Added, p.Addr()) })
	}
	return added
}

func TestAddressAddedAndRemoved(t *testing.T) {
	n := baseNet()
	m, f := startFake(t, n, nil)
	r := record(t, m)

	n.addrs = append(n.addrs, addrMsg{Index: 2, Prefix: v4b}, addrMsg{Index: 2, Prefix: v6})
	f.set(n)
	f.send(t, newAddrEvent(v4b))
	f.send(t, newAddrEvent(v6))
	got := r.barrier(t, m)
	for _, ip := range []netip.Addr{v4b.Addr(), v6.Addr()} {
		if a, rm := count(got, ip); a != 1 || rm != 0 {
			t.Errorf("%v: added in %d deltas, removed in %d; want 1, 0: %v", ip, a, rm, got)
		}
	}
	d := got[len(got)-1].d
	if !d.AddressAppeared() || d.InterfaceIPDisappeared(v4b.Addr()) {
		t.Errorf("AddressAppeared %v InterfaceIPDisappeared %v; want true, false", d.AddressAppeared(), d.InterfaceIPDisappeared(v4b.Addr()))
	}
	if want := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8"), netip.MustParsePrefix("192.0.2.2/24"), v4b, v6}; !slices.Equal(m.Addrs(), want) {
		t.Errorf("Addrs = %v, want %v", m.Addrs(), want)
	}

	n.addrs = n.addrs[:2]
	f.set(n)
	f.send(t, appendAddr(nil, rtmDelAddr, 0, 0, addrMsg{Index: 2, Prefix: v4b}))
	d = r.next(t).d
	if !slices.Equal(d.Removed, []netip.Addr{v4b.Addr(), v6.Addr()}) || len(d.Added) != 0 {
		t.Errorf("delta %v; want v4 and v6 removed", d)
	}
	if !d.InterfaceIPDisappeared(v4b.Addr()) || !d.InterfaceIPDisappeared(v6.Addr()) ||
		d.InterfaceIPDisappeared(netip.MustParseAddr("192.0.2.2")) || d.AddressAppeared() {
		t.Errorf("precomputed answers wrong for %v", d)
	}
}

func TestTentativeAddressIsNotUsable(t *testing.T) {
	n := baseNet()
	m, f := startFake(t, n, nil)
	r := record(t, m)

	tentative := addrMsg{Index: 2, Prefix: v6, Flags: ifaFTentative}
	n.addrs = append(n.addrs, tentative)
	f.set(n)
	f.send(t, appendAddr(nil, rtmNewAddr, 0, 0, tentative))
	d := r.next(t).d
	if len(d.Added) != 0 || d.AddressAppeared() {
		t.Errorf("tentative address reported usable: %v", d)
	}
	if ifi, _ := d.New.Interface("eth0"); !slices.Equal(ifi.Tentative, []netip.Prefix{v6}) {
		t.Errorf("eth0 tentative = %v, want %v", ifi.Tentative, v6)
	}
	if slices.Contains(m.Addrs(), v6) {
		t.Errorf("Addrs lists the tentative %v", v6)
	}

	n.addrs[2].Flags = 0 // DAD finished
	f.set(n)
	f.send(t, newAddrEvent(v6))
	d = r.next(t).d
	if !slices.Equal(d.Added, []netip.Addr{v6.Addr()}) || !d.AddressAppeared() {
		t.Errorf("delta %v; want %v added", d, v6)
	}

	// Optimistic DAD addresses are usable at once; failed ones never.
	if !(addrMsg{Flags: ifaFTentative | ifaFOptimistic}).usable() || (addrMsg{Flags: ifaFDadFailed}).usable() {
		t.Error("optimistic must be usable and dadfailed not")
	}
}

func TestLinkDownRemovesItsAddresses(t *testing.T) {
	n := baseNet()
	m, f := startFake(t, n, nil)
	r := record(t, m)

	// The kernel keeps IPv4 addresses on a link that is down, and the
	// carrier may go before the administrative state: both count.
	for _, flags := range []uint32{iffUp | iffBroadcast, iffBroadcast} {
		n.links[1].Flags = flags
		n.routes = nil
		f.set(n)
		f.send(t, appendLink(nil, rtmNewLink, 0, 0, n.links[1]))
		d := r.next(t).d
		if !slices.Equal(d.LinksDown, []string{"eth0"}) || !d.InterfaceIPDisappeared(netip.MustParseAddr("192.0.2.2")) ||
			len(d.RoutesRemoved) != 1 || d.AddressAppeared() {
			t.Errorf("flags %#x: delta %v; want eth0 down with 192.0.2.2 and its route", flags, d)
		}
		n.links[1].Flags = upFlags
		n.routes = baseNet().routes
		f.set(n)
		f.send(t, appendLink(nil, rtmNewLink, 0, 0, n.links[1]))
		d = r.next(t).d
		if !slices.Equal(d.LinksUp, []string{"eth0"}) || !slices.Equal(d.Added, []netip.Addr{netip.MustParseAddr("192.0.2.2")}) ||
			len(d.RoutesAdded) != 1 || !d.AddressAppeared() {
			t.Errorf("delta %v; want eth0 up with 192.0.2.2 and its route", d)
		}
	}
	if got := m.Addrs(); len(got) != 2 {
		t.Errorf("Addrs = %v", got)
	}
}

func TestDefaultRouteAlone(t *testing.T) {
	n := baseNet()
	n.routes = nil
	m, f := startFake(t, n, nil)
	r := record(t, m)

	// A route that is not a default route is not worth a re-read.
	calls := f.stateCalls.Load()
	f.send(t, appendRoute(nil, rtmNewRoute, 0, 0, routeMsg{Family: afInet, DstLen: 24, Table: rtTableMain, Type: rtnUnicast, Oif: 2}))
	n.routes = baseNet().routes
	f.set(n)
	f.send(t, appendRoute(nil, rtmNewRoute, 0, 0, n.routes[0]))
	d := r.next(t).d
	if calls := f.stateCalls.Load() - calls; calls != 1 {
		t.Errorf("%d state reads, want 1 (for the default route only)", calls)
	}
	want := Route{Gateway: netip.MustParseAddr("192.0.2.1"), Interface: "eth0"}
	if !slices.Equal(d.RoutesAdded, []Route{want}) || !d.AddressAppeared() || len(d.Added) != 0 {
		t.Errorf("delta %v; want route %v added", d, want)
	}
}

func TestInjectEventWithoutChange(t *testing.T) {
	m, _ := startFake(t, baseNet(), nil)
	r := record(t, m)
	m.InjectEvent()
	d := r.next(t).d
	if !d.Injected || d.changed() || d.AddressAppeared() {
		t.Errorf("delta %v; want injected and empty", d)
	}
	if !d.Old.Equal(&d.New) || len(d.New.Interfaces) != 2 {
		t.Errorf("old %v new %v", &d.Old, &d.New)
	}
}

// TestStormDoesNotPostponeDelivery checks that Debounce counts from the
// first event of a burst: a stream of events that never pauses still gets
// its changes delivered, each once, in far fewer callbacks than events.
func TestStormDoesNotPostponeDelivery(t *testing.T) {
	n := baseNet()
	m, f := startFake(t, n, &Config{Debounce: 30 * time.Millisecond})
	r := record(t, m)

	var added []netip.Addr
	var got []timedDelta
	for i := 0; len(got) < 3; i++ {
		if i == 250 {
			t.Fatalf("%d events and %d deltas: a storm postpones delivery", i, len(got))
		}
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(3 + i)}), 24)
		added = append(added, p.Addr())
		n.addrs = append(n.addrs, addrMsg{Index: 2, Prefix: p})
		f.set(n)
		f.send(t, newAddrEvent(p))
		select {
		case td := <-r.ch:
			got = append(got, td)
		case <-time.After(2 * time.Millisecond): // the storm's pace, not a synchronisation
		}
	}
	got = append(got, r.barrier(t, m)...)
	for _, ip := range added {
		if a, rm := count(got, ip); a != 1 || rm != 0 {
			t.Errorf("%v added in %d deltas, removed in %d; want 1, 0", ip, a, rm)
		}
	}
	t.Logf("%d events delivered in %d callbacks", len(added), len(got))
	if len(got) >= len(added) {
		t.Errorf("%d events gave %d callbacks: no debouncing", len(added), len(got))
	}
}

// TestCallbacksInOrderWithoutLock checks that a callback may call the
// Monitor back and that every subscriber sees the deltas in order.
func TestCallbacksInOrderWithoutLock(t *testing.T) {
	n := baseNet()
	m, f := startFake(t, n, nil)
	r := record(t, m)

	var mu sync.Mutex
	var seen []netip.Addr
	unregister := m.RegisterChangeCallback(func(d *ChangeDelta) {
		_ = m.Addrs()
		_ = m.State()
		m.RegisterChangeCallback(func(*ChangeDelta) {})() // register and unregister
		m.InjectEvent()
		mu.Lock()
		seen = append(seen, d.Added...)
		mu.Unlock()
	})
	defer unregister()

	want := addOneByOne(t, n, f, r, 10)
	r.barrier(t, m) // the other subscriber's queue is ahead of the recorder's or level
	r.barrier(t, m)
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(seen, want) {
		t.Errorf("callback saw %v, want %v in order", seen, want)
	}
}

// TestSlowSubscriber checks that a blocked subscriber delays only itself
// and that its queue stays bounded without losing a change.
func TestSlowSubscriber(t *testing.T) {
	n := baseNet()
	m, f := startFake(t, n, nil)
	fast := record(t, m)

	release := make(chan struct{})
	var mu sync.Mutex
	var slow []*ChangeDelta
	unregister := m.RegisterChangeCallback(func(d *ChangeDelta) {
		<-release
		mu.Lock()
		slow = append(slow, d)
		mu.Unlock()
	})
	defer unregister()

	const changes = 3 * maxQueue
	want := addOneByOne(t, n, f, fast, changes)
	close(release)
	fast.barrier(t, m)
	deadline := time.Now().Add(waitTimeout)
	for {
		mu.Lock()
		var got []netip.Addr
		for _, d := range slow {
			got = append(got, d.Added...)
		}
		k := len(slow)
		done := k > 0 && slow[k-1].Injected
		mu.Unlock()
		if slices.Equal(got, want) && done {
			if k > maxQueue+2 {
				t.Errorf("slow subscriber got %d deltas; its queue should hold %d", k, maxQueue)
			}
			t.Logf("%d changes reached the slow subscriber in %d deltas", changes, k)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slow subscriber saw %v, want %v", got, want)
		}
		time.Sleep(time.Millisecond) // polling a condition, with a deadline
	}
}

func TestUnregister(t *testing.T) {
	m, _ := startFake(t, baseNet(), nil)
	r := record(t, m)
	calls := make(chan struct{}, 10)
	unregister := m.RegisterChangeCallback(func(*ChangeDelta) { calls <- struct{}{} })
	m.InjectEvent()
	r.next(t)
	<-calls
	unregister()
	unregister() // idempotent
	m.InjectEvent()
	r.next(t)
	r.barrier(t, m)
	if len(calls) != 0 {
		t.Errorf("%d calls after unregister", len(calls))
	}
}

func TestLifecycle(t *testing.T) {
	f := newFakeOS(baseNet())
	m, err := newMonitor((*Config)(nil).populate(), f, false)
	if err != nil {
		t.Fatal(err)
	}
	r := record(t, m)
	m.InjectEvent() // before Start: waits for it
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	if d := r.next(t).d; !d.Injected {
		t.Errorf("delta %v, want the injected one", d)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := m.Start(); !errors.Is(err, net.ErrClosed) || !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
	m.RegisterChangeCallback(func(*ChangeDelta) { t.Error("called after Close") })()
	m.InjectEvent()

	// Close without Start.
	m2, err := newMonitor((*Config)(nil).populate(), newFakeOS(baseNet()), false)
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestReceiveErrorResyncs(t *testing.T) {
	n := baseNet()
	m, f := startFake(t, n, nil)
	r := record(t, m)
	n.addrs = append(n.addrs, addrMsg{Index: 2, Prefix: v4b})
	f.set(n)
	f.errs <- errTest // as after lost events: the monitor re-reads everything
	if d := r.next(t).d; !slices.Equal(d.Added, []netip.Addr{v4b.Addr()}) {
		t.Errorf("delta %v, want %v added", d, v4b)
	}
	if !handlerOf(m.log).logged("receive") {
		t.Error("receive error not logged")
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg := &Config{Debounce: -1}
	c := cfg.populate()
	if c.Debounce != 0 || c.PollInterval != defaultPollInterval || c.Logger == nil {
		t.Errorf("populate(%+v) = %+v", cfg, c)
	}
	if cfg.Debounce != -1 || cfg.Logger != nil {
		t.Error("populate changed the caller's Config")
	}
	c = (*Config)(nil).populate()
	if c.Debounce != defaultDebounce || c.PollInterval != defaultPollInterval {
		t.Errorf("nil populate = %+v", c)
	}
}

func TestPolling(t *testing.T) {
	var mu sync.Mutex
	st, err := stateFromDump(baseNet().dump())
	if err != nil {
		t.Fatal(err)
	}
	enumerate := func() (State, error) {
		mu.Lock()
		defer mu.Unlock()
		return st, nil
	}
	c := (&Config{PollInterval: 5 * time.Millisecond, Logger: testLogger(t)}).populate()
	m, err := newMonitor(c, newPollingMon(c.PollInterval, enumerate), true)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !m.Polling() {
		t.Error("Polling() = false")
	}
	r := record(t, m)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	n := baseNet()
	n.addrs = append(n.addrs, addrMsg{Index: 2, Prefix: v4b})
	mu.Lock()
	st, _ = stateFromDump(n.dump())
	mu.Unlock()
	if d := r.next(t).d; !slices.Equal(d.Added, []netip.Addr{v4b.Addr()}) {
		t.Errorf("delta %v, want %v added", d, v4b)
	}
}

func TestPollingRealInterfaces(t *testing.T) {
	st, err := interfaceState()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(st.Addrs(), func(p netip.Prefix) bool { return p.Addr().IsLoopback() }) {
		t.Errorf("no loopback address in %v", &st)
	}
}

// TestLossSkipsDebounce checks that a possible loss is delivered at once,
// along with any addition still being gathered, while an addition alone
// waits for the debounce.
func TestLossSkipsDebounce(t *testing.T) {
	n := baseNet()
	m, f := startFake(t, n, &Config{Debounce: time.Hour})
	r := record(t, m)

	n.addrs = append(n.addrs, addrMsg{Index: 2, Prefix: v4b})
	f.set(n)
	f.send(t, newAddrEvent(v4b)) // gathered for an hour
	n.addrs = slices.Delete(n.addrs, 1, 2)
	f.set(n)
	f.send(t, appendAddr(nil, rtmDelAddr, 0, 0, addrMsg{Index: 2, Prefix: n.addrs[0].Prefix}))
	d := r.next(t).d
	if !slices.Equal(d.Added, []netip.Addr{v4b.Addr()}) || !slices.Equal(d.Removed, []netip.Addr{netip.MustParseAddr("192.0.2.2")}) {
		t.Errorf("delta %v; want 192.0.2.77 added and 192.0.2.2 removed", d)
	}

	// A link going down is a loss too.
	n.links[1].Flags = iffUp
	f.set(n)
	f.send(t, appendLink(nil, rtmNewLink, 0, 0, n.links[1]))
	if d := r.next(t).d; !slices.Equal(d.LinksDown, []string{"eth0"}) {
		t.Errorf("delta %v; want eth0 down", d)
	}
}

func TestFallbackToPolling(t *testing.T) {
	log := testLogger(t)
	refused := func(Config) (osMon, error) { return nil, syscall.EPERM }
	m, err := openMonitor((&Config{Logger: log}).populate(), refused)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !m.Polling() || !handlerOf(log).logged("polling instead") || len(m.Addrs()) == 0 {
		t.Errorf("Polling %v, Addrs %v: want a polling monitor that sees the loopback", m.Polling(), m.Addrs())
	}
	// Netlink that opens but cannot dump falls back too.
	f := newFakeOS(baseNet())
	f.dump = []byte{1, 2, 3}
	m2, err := openMonitor((&Config{Logger: log}).populate(), func(Config) (osMon, error) { return f, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if !m2.Polling() {
		t.Error("a monitor that cannot read the state does not poll")
	}
	select {
	case <-f.done:
	default:
		t.Error("the failed OS monitor was not closed")
	}
}
