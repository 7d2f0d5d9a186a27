//go:build linux

package netmon

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rockudp/rockudp/test/netlab"
	"golang.org/x/sys/unix"
)

// These tests run the netlink monitor inside a network namespace of a
// netlab lab: host h, plugged into router r by eth0. They change the
// host's addresses and links with ip(8) and check that each change is
// reported once, with the right address. They log latencies (from the ip
// command returning to the callback) and assert nothing about them: the
// machine is shared.

var (
	labNet4 = netip.MustParsePrefix("192.0.2.0/24")
	labNet6 = netip.MustParsePrefix("2001:db8:1::/64")
	hostV4  = netip.MustParseAddr("192.0.2.2")
	hostV6  = netip.MustParseAddr("2001:db8:1::2")
)

type labEnv struct {
	lab  *netlab.Lab
	h    *netlab.Host
	link *netlab.Link
	m    *Monitor
	r    *recorder
}

// newLabEnv builds the lab and starts a Monitor in h's namespace.
func newLabEnv(t *testing.T, cfg *Config) *labEnv {
	lab := netlab.New(t)
	e := &labEnv{lab: lab, h: lab.Host("h")}
	rt := lab.Router("r")
	e.link = lab.Connect(e.h, rt, labNet4, labNet6)
	if cfg == nil {
		cfg = &Config{Logger: testLogger(t)}
	}
	if err := e.h.Do(func() (err error) {
		e.m, err = New(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.m.Close() })
	if e.m.Polling() {
		t.Fatal("netlink refused in the lab")
	}
	e.r = record(t, e.m)
	if err := e.m.Start(); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *labEnv) ip(t *testing.T, args ...string) {
	t.Helper()
	if _, err := e.h.Run(context.Background(), "ip", args...); err != nil {
		t.Fatal(err)
	}
}

// latencies collects latencies by scenario, for the log.
type latencies map[string][]time.Duration

func (l latencies) log(t *testing.T) {
	names := make([]string, 0, len(l))
	for name := range l {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		ds := slices.Clone(l[name])
		slices.Sort(ds)
		t.Logf("latency %-28s n=%-3d min=%-10v median=%-10v max=%v", name, len(ds), ds[0], ds[len(ds)/2], ds[len(ds)-1])
	}
}

// changeResult is what change observed.
type changeResult struct {
	started, returned time.Time    // when do started and returned
	last              timedDelta   // the delta that completed the expected change
	all               []timedDelta // every delta up to the barrier
}

// latency is the time from do returning to the delta that completed the
// change, or zero if that came first.
func (c changeResult) latency() time.Duration { return max(0, c.last.at.Sub(c.returned)) }

// first returns the first delta for which ok is true.
func (c changeResult) first(ok func(*ChangeDelta) bool) (timedDelta, bool) {
	for _, td := range c.all {
		if ok(td.d) {
			return td, true
		}
	}
	return timedDelta{}, false
}

// change runs do, waits until every address of added and removed has been
// reported so, and checks that each was reported exactly once (a barrier
// collects any late duplicate).
func (e *labEnv) change(t *testing.T, do func() error, added, removed []netip.Addr, check func(*ChangeDelta)) changeResult {
	t.Helper()
	started := time.Now()
	if err := do(); err != nil {
		t.Fatal(err)
	}
	returned := time.Now()
	missing := func(tds []timedDelta) bool {
		for _, ip := range added {
			if a, _ := count(tds, ip); a == 0 {
				return true
			}
		}
		for _, ip := range removed {
			if _, r := count(tds, ip); r == 0 {
				return true
			}
		}
		return false
	}
	var got []timedDelta
	for missing(got) {
		got = append(got, e.r.next(t))
	}
	last := got[len(got)-1]
	if check != nil {
		check(last.d)
	}
	all := append(got, e.r.barrier(t, e.m)...)
	for _, ip := range added {
		if a, r := count(all, ip); a != 1 || r != 0 {
			t.Errorf("%v added in %d deltas, removed in %d: want 1, 0: %v", ip, a, r, deltas(all))
		}
	}
	for _, ip := range removed {
		if a, r := count(all, ip); a != 0 || r != 1 {
			t.Errorf("%v added in %d deltas, removed in %d: want 0, 1: %v", ip, a, r, deltas(all))
		}
	}
	return changeResult{started: started, returned: returned, last: last, all: all}
}

func deltas(tds []timedDelta) string {
	var s []string
	for _, td := range tds {
		s = append(s, td.d.String())
	}
	return strings.Join(s, "; ")
}

func TestNetnsAddresses(t *testing.T) {
	for _, debounce := range []time.Duration{0, -1} {
		t.Run(fmt.Sprintf("debounce=%v", (&Config{Debounce: debounce}).populate().Debounce), func(t *testing.T) {
			testNetnsAddresses(t, &Config{Debounce: debounce, Logger: testLogger(t)})
		})
	}
}

func testNetnsAddresses(t *testing.T, cfg *Config) {
	e := newLabEnv(t, cfg)
	lat := latencies{}
	if got := e.m.Addrs(); !slices.Contains(got, netip.PrefixFrom(hostV4, 24)) || !slices.Contains(got, netip.PrefixFrom(hostV6, 64)) {
		t.Fatalf("Addrs = %v, want the lab's addresses", got)
	}
	const rounds = 10
	for i := range rounds {
		v4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i)}), 24)
		v6 := netip.PrefixFrom(netip.MustParseAddr(fmt.Sprintf("2001:db8:1::%x", 0x100+i)), 64)
		for _, p := range []netip.Prefix{v4, v6} {
			fam := "ipv4"
			if p.Addr().Is6() {
				fam = "ipv6"
			}
			lat[fam+" add"] = append(lat[fam+" add"], e.change(t, func() error {
				_, err := e.h.Run(context.Background(), "ip", "addr", "add", p.String(), "dev", "eth0")
				return err
			}, []netip.Addr{p.Addr()}, nil, func(d *ChangeDelta) {
				if !d.AddressAppeared() || !slices.Contains(e.m.Addrs(), p) {
					t.Errorf("%v: AddressAppeared %v, Addrs %v", p, d.AddressAppeared(), e.m.Addrs())
				}
			}).latency())
			lat[fam+" remove"] = append(lat[fam+" remove"], e.change(t, func() error {
				_, err := e.h.Run(context.Background(), "ip", "addr", "del", p.String(), "dev", "eth0")
				return err
			}, nil, []netip.Addr{p.Addr()}, func(d *ChangeDelta) {
				if !d.InterfaceIPDisappeared(p.Addr()) || d.InterfaceIPDisappeared(hostV4) {
					t.Errorf("%v: InterfaceIPDisappeared wrong in %v", p, d)
				}
			}).latency())
		}
	}
	// As a DHCP client renews into a new address: netlab removes the old
	// address (the kernel drops the default route with it), adds the new
	// one and restores the default route. The old address's removal is
	// timed from ChangeAddr starting (an upper bound), the default route's
	// return, which makes the new address usable, from ChangeAddr returning.
	old := netip.PrefixFrom(hostV4, 24)
	for i := range rounds {
		next := netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(200 + i)}), 24)
		c := e.change(t, func() error {
			return e.link.ChangeAddr(old, next)
		}, []netip.Addr{next.Addr()}, []netip.Addr{old.Addr()}, nil)
		removed, _ := c.first(func(d *ChangeDelta) bool { return d.InterfaceIPDisappeared(old.Addr()) })
		lat["ChangeAddr: old removed*"] = append(lat["ChangeAddr: old removed*"], removed.at.Sub(c.started))
		route, ok := c.first(func(d *ChangeDelta) bool { return len(d.RoutesAdded) > 0 })
		if !ok || !route.d.AddressAppeared() || route.d.New.DefaultRoutes[0].Gateway != netip.MustParseAddr("192.0.2.1") {
			t.Errorf("default route's return not reported: %v", deltas(c.all))
		} else {
			lat["ChangeAddr: route back"] = append(lat["ChangeAddr: route back"], max(0, route.at.Sub(c.returned)))
		}
		old = next
	}
	lat.log(t)
}

func TestNetnsTentativeIPv6(t *testing.T) {
	e := newLabEnv(t, nil)
	// The lab turns duplicate address detection off; turn it on for eth0.
	if _, err := e.h.Run(context.Background(), "sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_dad=1"); err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix("2001:db8:1::77/64")
	start := time.Now()
	e.ip(t, "addr", "add", p.String(), "dev", "eth0")
	added := time.Now()
	var sawTentative bool
	for {
		td := e.r.next(t)
		ifi, _ := td.d.New.Interface("eth0")
		if slices.Contains(ifi.Tentative, p) {
			sawTentative = true
			if slices.Contains(td.d.Added, p.Addr()) || slices.Contains(e.m.Addrs(), p) {
				t.Fatalf("tentative %v reported usable: %v", p, td.d)
			}
		}
		if slices.Contains(td.d.Added, p.Addr()) {
			if slices.Contains(ifi.Tentative, p) || !slices.Contains(ifi.Prefixes, p) {
				t.Errorf("added while tentative: %v", td.d)
			}
			t.Logf("tentative seen: %v; usable %v after the ip command returned (DAD), %v after it started", sawTentative, td.at.Sub(added), td.at.Sub(start))
			break
		}
	}
	if !sawTentative {
		t.Error("never saw the address tentative: DAD did not run")
	}
}

func TestNetnsLinkDownUp(t *testing.T) {
	e := newLabEnv(t, nil)
	lat := latencies{}
	for range 5 {
		// Down removes the usable IPv4 address (the kernel keeps it) and
		// deletes the IPv6 one.
		lat["link down (ip link)"] = append(lat["link down (ip link)"], e.change(t, func() error {
			_, err := e.h.Run(context.Background(), "ip", "link", "set", "eth0", "down")
			return err
		}, nil, []netip.Addr{hostV4, hostV6}, func(d *ChangeDelta) {
			if !slices.Contains(d.LinksDown, "eth0") {
				t.Errorf("eth0 not down in %v", d)
			}
		}).latency())
		// Up with a carrier brings the IPv4 address back; the IPv6 one
		// (and the routes) come back when netlab reconfigures the link.
		lat["link up (ip link)"] = append(lat["link up (ip link)"], e.change(t, func() error {
			_, err := e.h.Run(context.Background(), "ip", "link", "set", "eth0", "up")
			return err
		}, []netip.Addr{hostV4}, nil, func(d *ChangeDelta) {
			if !slices.Contains(d.LinksUp, "eth0") || !d.AddressAppeared() {
				t.Errorf("eth0 not up in %v", d)
			}
		}).latency())
		lat["IPv6 back (netlab Up)"] = append(lat["IPv6 back (netlab Up)"], e.change(t, e.link.Up, []netip.Addr{hostV6}, nil, nil).latency())
		if rs := e.m.State().DefaultRoutes; len(rs) != 2 {
			t.Errorf("default routes after Up: %v, want IPv4 and IPv6", rs)
		}

		// netlab's Down and Up take both ends down and up.
		lat["netlab Down"] = append(lat["netlab Down"], e.change(t, e.link.Down, nil, []netip.Addr{hostV4, hostV6}, nil).latency())
		lat["netlab Up"] = append(lat["netlab Up"], e.change(t, e.link.Up, []netip.Addr{hostV4, hostV6}, nil, func(d *ChangeDelta) {
			if !d.AddressAppeared() {
				t.Errorf("AddressAppeared false in %v", d)
			}
		}).latency())
	}
	lat.log(t)
}

// TestNetnsPolling runs the polling fallback against the lab's namespace.
func TestNetnsPolling(t *testing.T) {
	lab := netlab.New(t)
	h := lab.Host("h")
	link := lab.Connect(h, lab.Router("r"), labNet4, labNet6)
	enumerate := func() (st State, err error) {
		derr := h.Do(func() error {
			st, err = interfaceState()
			return nil
		})
		return st, cmpOr(derr, err)
	}
	c := (&Config{PollInterval: 20 * time.Millisecond, Logger: testLogger(t)}).populate()
	m, err := newMonitor(c, newPollingMon(c.PollInterval, enumerate), true)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	e := &labEnv{lab: lab, h: h, link: link, m: m, r: record(t, m)}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix("192.0.2.55/24")
	d := e.change(t, func() error {
		_, err := h.Run(context.Background(), "ip", "addr", "add", p.String(), "dev", "eth0")
		return err
	}, []netip.Addr{p.Addr()}, nil, nil).latency()
	t.Logf("polling every %v: address seen after %v", c.PollInterval, d)
	e.change(t, link.Down, nil, []netip.Addr{hostV4, p.Addr(), hostV6}, nil)
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// addrBatch returns an "ip -batch" script adding n /32 addresses of the
// /24 net (a documentation range) to eth0, and the addresses.
func addrBatch(n int, net netip.Prefix) (string, []netip.Addr) {
	var sb strings.Builder
	var ips []netip.Addr
	for i := range n {
		b := net.Addr().As4()
		ip := netip.AddrFrom4([4]byte{b[0], b[1], b[2], byte(1 + i)})
		ips = append(ips, ip)
		fmt.Fprintf(&sb, "addr add %v/32 dev eth0\n", ip)
	}
	return sb.String(), ips
}

func runBatch(h *netlab.Host, script string) error {
	cmd := h.Command(context.Background(), "ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -batch: %v: %s", err, out)
	}
	return nil
}

// shrink sets the event socket's receive buffer to the kernel's minimum,
// so that a burst overflows it.
func shrink(t *testing.T, om osMon) {
	nm := om.(*netlinkMon)
	var serr error
	if err := nm.evConn.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 0)
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
}

// TestNetnsLostEvents overflows the event socket: the kernel drops events
// and says so with ENOBUFS, and the dump that follows still finds every
// address.
func TestNetnsLostEvents(t *testing.T) {
	lab := netlab.New(t)
	h := lab.Host("h")
	lab.Connect(h, lab.Router("r"), labNet4)
	log := testLogger(t)
	var om osMon
	if err := h.Do(func() (err error) {
		om, err = newOSMon(Config{Logger: log})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer om.Close()
	shrink(t, om)
	script, ips := addrBatch(200, netip.MustParsePrefix("203.0.113.0/24"))
	if err := runBatch(h, script); err != nil {
		t.Fatal(err)
	}
	if err := om.(*netlinkMon).ev.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	urgent, err := om.Receive()
	if err != nil || !urgent || !handlerOf(log).logged("ENOBUFS") {
		t.Fatalf("Receive = %v, %v; want a resync after ENOBUFS", urgent, err)
	}
	st, err := om.State()
	if err != nil {
		t.Fatal(err)
	}
	ifi, _ := st.Interface("eth0")
	for _, ip := range ips {
		if !slices.Contains(ifi.Prefixes, netip.PrefixFrom(ip, 32)) {
			t.Fatalf("%v missing after the resync: %v", ip, &st)
		}
	}

	// The same storm against a running Monitor: every address is
	// reported once, whether or not events were lost.
	var m *Monitor
	if err := h.Do(func() (err error) {
		m, err = New(&Config{Logger: log})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	shrink(t, m.os)
	e := &labEnv{lab: lab, h: h, m: m, r: record(t, m)}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	script, ips = addrBatch(200, netip.MustParsePrefix("198.51.100.0/24"))
	c := e.change(t, func() error { return runBatch(h, script) }, ips, nil, nil)
	t.Logf("200 addresses added by one ip -batch: %d callbacks, last %v after ip returned", len(c.all), c.latency())
}
