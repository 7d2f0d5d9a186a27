//go:build linux

package netlab_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rockudp/rockudp/test/netlab"
)

const timeout = 5 * time.Second

// Two hosts on either side of a router talk TCP and UDP over IPv4 and IPv6,
// and each sees the other's own address.
func TestTCPAndUDP(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	for _, v6 := range []bool{false, true} {
		want := p.la.Prefixes()[b2i(v6)].Addr()
		seen, err := tcpEcho(t, p.a, p.addrB(v6), timeout)
		if err != nil {
			t.Fatalf("TCP to %s: %v", p.addrB(v6), err)
		}
		if seen.Addr().Unmap() != want {
			t.Errorf("TCP: server saw %v, want %v", seen, want)
		}
		seen, err = udpEcho(t, p.a, p.addrB(v6), timeout)
		if err != nil {
			t.Fatalf("UDP to %s: %v", p.addrB(v6), err)
		}
		if seen.Addr().Unmap() != want {
			t.Errorf("UDP: server saw %v, want %v", seen, want)
		}
	}
}

// minRTT returns the smallest of n UDP round trips from u to addr.
func minRTT(t *testing.T, u *udpSocket, addr string, n int) time.Duration {
	t.Helper()
	best := time.Duration(1 << 62)
	for i := range n {
		_, rtt, err := u.ask(addr, fmt.Sprintf("rtt probe %d", i), timeout)
		if err != nil {
			t.Fatalf("UDP round trip to %s: %v", addr, err)
		}
		best = min(best, rtt)
	}
	return best
}

// The delay holds each packet in each direction, so a round trip through
// the link takes at least twice as long; changing it takes effect, and
// removing it restores the direct path. Only lower bounds are checked,
// except a loose upper one once the delay is gone.
func TestDelay(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	const d = 100 * time.Millisecond
	must(t, p.la.SetDelay(d))
	for _, v6 := range []bool{false, true} {
		u := newUDP(t, p.a, "udp")
		if rtt := minRTT(t, u, p.addrB(v6), 3); rtt < 2*d {
			t.Errorf("v6=%v: smallest round trip %v with a delay of %v each way, want at least %v", v6, rtt, d, 2*d)
		} else {
			t.Logf("v6=%v: smallest round trip %v with a delay of %v each way", v6, rtt, d)
		}
	}

	// TCP through the delay: a bulk transfer arrives intact and in order.
	ec, err := dialEcho(t, p.a, p.addrB(false), timeout)
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.Repeat("0123456789abcdef", 16<<10) // 256 KiB
	if err := ec.echo(msg, 30*time.Second); err != nil {
		t.Fatalf("bulk echo through the delay: %v", err)
	}

	must(t, p.la.SetDelay(3*d))
	u := newUDP(t, p.a, "udp")
	if rtt := minRTT(t, u, p.addrB(false), 2); rtt < 6*d {
		t.Errorf("after raising the delay to %v: smallest round trip %v, want at least %v", 3*d, rtt, 6*d)
	}
	if err := ec.echo("slower", 10*time.Second); err != nil {
		t.Errorf("connection made through the delay, after changing it: %v", err)
	}
	// Renumbered into another subnet, the host's traffic is still delayed
	// both ways.
	must(t, p.la.SetDelay(d))
	must(t, p.la.ChangeAddr(p.la.Prefixes()[0], netip.MustParsePrefix("203.0.113.0/24")))
	if rtt := minRTT(t, u, p.addrB(false), 2); rtt < 2*d {
		t.Errorf("after renumbering: smallest round trip %v, want at least %v", rtt, 2*d)
	}
	must(t, p.la.SetDelay(0))
	if rtt := minRTT(t, u, p.addrB(false), 10); rtt >= d {
		t.Errorf("without delay: smallest of 10 round trips is %v, want under %v", rtt, d)
	}
}

// Loss drops about the given share of packets: of 2000 datagrams sent one
// way through a link losing 30%, between 55% and 85% arrive.
func TestLoss(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	sink, err := p.b.ListenPacket("udp", ":9")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	sink.(*net.UDPConn).SetReadBuffer(4 << 20)
	u := newUDP(t, p.a, "udp")
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.lb.Addr(), 9))

	// The sink counts datagrams until an end marker arrives.
	got := make(chan int, 1)
	go func() {
		n := 0
		buf := make([]byte, 200)
		for {
			m, _, err := sink.ReadFrom(buf)
			if err != nil || string(buf[:m]) == "end" {
				got <- n
				return
			}
			n++
		}
	}()
	sink.SetReadDeadline(time.Now().Add(30 * time.Second))

	must(t, p.la.SetLoss(30))
	const sent = 2000
	payload := make([]byte, 100)
	for range sent {
		if _, err := u.WriteTo(payload, to); err != nil {
			t.Fatal(err)
		}
	}
	// Without loss, the end marker follows the datagrams along the same
	// path: once it arrives, everything sent before it has arrived or is lost.
	must(t, p.la.SetLoss(0))
	var arrived int
	for done := false; !done; {
		u.WriteTo([]byte("end"), to)
		select {
		case arrived = <-got:
			done = true
		case <-time.After(100 * time.Millisecond):
		}
	}
	frac := float64(arrived) / sent
	t.Logf("%d of %d datagrams arrived through 30%% loss (%.1f%%)", arrived, sent, 100*frac)
	if frac < 0.55 || frac > 0.85 {
		t.Errorf("%.1f%% arrived through 30%% loss, want 55%% to 85%%", 100*frac)
	}
}

// BlockUDP drops UDP, in both address families, while TCP flows.
func TestBlockUDP(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	must(t, p.la.BlockUDP(true))
	for _, v6 := range []bool{false, true} {
		if _, err := udpEcho(t, p.a, p.addrB(v6), 300*time.Millisecond); !isTimeout(err) {
			t.Errorf("v6=%v: UDP through a link that blocks UDP: %v, want a timeout", v6, err)
		}
		if _, err := tcpEcho(t, p.a, p.addrB(v6), timeout); err != nil {
			t.Errorf("v6=%v: TCP through a link that blocks UDP: %v", v6, err)
		}
	}
	must(t, p.la.BlockUDP(false))
	for _, v6 := range []bool{false, true} {
		if _, err := udpEcho(t, p.a, p.addrB(v6), timeout); err != nil {
			t.Errorf("v6=%v: UDP after unblocking: %v", v6, err)
		}
	}
}

// BlockAll silently stops everything, also to the router, and an
// established connection carries on once the block is lifted.
func TestBlockAll(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	ec, err := dialEcho(t, p.a, p.addrB(false), timeout)
	if err != nil {
		t.Fatal(err)
	}
	router := echoAddr(p.la.Gateways()[0]) // nothing listens: normally refused at once
	if _, err := tcpEcho(t, p.a, router, timeout); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("TCP to the router without block: %v, want connection refused", err)
	}

	must(t, p.la.BlockAll(true))
	if err := ec.echo("blocked", 300*time.Millisecond); !isTimeout(err) {
		t.Errorf("established connection through a blocked link: %v, want a timeout", err)
	}
	if _, err := tcpEcho(t, p.a, p.addrB(true), 300*time.Millisecond); !isTimeout(err) {
		t.Errorf("new IPv6 connection through a blocked link: %v, want a timeout", err)
	}
	if _, err := tcpEcho(t, p.a, router, 300*time.Millisecond); !isTimeout(err) {
		t.Errorf("TCP to the router through a blocked link: %v, want a timeout", err)
	}

	must(t, p.la.BlockAll(false))
	// The echo of "blocked" comes first, once TCP retransmits it.
	if err := ec.echo("unblocked", 10*time.Second); err == nil || !strings.Contains(err.Error(), `"blocked`) {
		t.Errorf("established connection after unblocking: %v, want the delayed echo of the first message", err)
	}
	if _, err := tcpEcho(t, p.a, p.addrB(false), timeout); err != nil {
		t.Errorf("new connection after unblocking: %v", err)
	}
}

// The rate limit stretches a transfer: 200 KB at 2 Mbit/s takes 0.8 s in
// theory; at least half of that is required.
func TestRate(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	ec, err := dialEcho(t, p.a, p.addrB(false), timeout)
	if err != nil {
		t.Fatal(err)
	}
	const size, rate = 200_000, 2_000_000
	must(t, p.la.SetRate(rate))
	start := time.Now()
	if err := ec.echo(strings.Repeat("r", size), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	took, ideal := time.Since(start), time.Duration(size*8*float64(time.Second)/rate)
	t.Logf("%d bytes each way at %d bit/s took %v (ideal %v)", size, rate, took, ideal)
	if took < ideal/2 {
		t.Errorf("%d bytes at %d bit/s took %v, want at least %v", size, rate, took, ideal/2)
	}
	must(t, p.la.SetRate(0))
	if err := ec.echo("unlimited", timeout); err != nil {
		t.Error(err)
	}
}

// Down takes the interface down: the host loses its IPv6 address and its
// routes. Up restores them, and an established connection carries on.
func TestDownUp(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	ec, err := dialEcho(t, p.a, p.addrB(false), timeout)
	if err != nil {
		t.Fatal(err)
	}
	want := p.la.Prefixes()

	must(t, p.la.Down())
	if got := addrs(t, p.a); !slices.Equal(got, want[:1]) {
		t.Errorf("addresses while down: %v, want only %v", got, want[:1])
	}
	for _, v6 := range []bool{false, true} {
		if _, err := tcpEcho(t, p.a, p.addrB(v6), timeout); !errors.Is(err, syscall.ENETUNREACH) {
			t.Errorf("v6=%v: connecting while down: %v, want network unreachable", v6, err)
		}
	}

	must(t, p.la.Up())
	if got := addrs(t, p.a); !slices.Equal(got, want) {
		t.Errorf("addresses after up: %v, want %v", got, want)
	}
	if err := ec.echo("after up", 10*time.Second); err != nil {
		t.Errorf("established connection after up: %v", err)
	}
	for _, v6 := range []bool{false, true} {
		if _, err := tcpEcho(t, p.a, p.addrB(v6), timeout); err != nil {
			t.Errorf("v6=%v: connecting after up: %v", v6, err)
		}
	}
}

// addrs returns h's global addresses, sorted IPv4 first.
func addrs(t *testing.T, h *netlab.Host) []netip.Prefix {
	t.Helper()
	got, err := h.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return got
}

// ChangeAddr works like a DHCP client: the old address stops working (also
// for connections made from it) and the new one works, in both families and
// across subnets (the router is renumbered).
func TestChangeAddr(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	startEcho(t, p.a)
	for _, tc := range []struct{ old, new string }{
		{"192.0.2.2/24", "192.0.2.77/24"},
		{"2001:db8:a::2/64", "2001:db8:a::77/64"},
		{"192.0.2.77/24", "203.0.113.0/24"}, // another subnet: a gets .2
	} {
		old, new := netip.MustParsePrefix(tc.old), netip.MustParsePrefix(tc.new)
		v6 := old.Addr().Is6()
		ec, err := dialEcho(t, p.a, p.addrB(v6), timeout)
		if err != nil {
			t.Fatal(err)
		}
		must(t, p.la.ChangeAddr(old, new))
		newAddr := p.la.Prefixes()[b2i(v6)].Addr()
		if got := addrs(t, p.a); slices.Contains(got, old) || !slices.Contains(got, p.la.Prefixes()[b2i(v6)]) {
			t.Errorf("%s -> %s: a has %v", old, new, got)
		}
		if _, err := tcpEcho(t, p.b, echoAddr(old.Addr()), time.Second); err == nil {
			t.Errorf("%s -> %s: the old address still answers", old, new)
		}
		if err := ec.echo("from the old address", 300*time.Millisecond); err == nil {
			t.Errorf("%s -> %s: a connection from the old address still works", old, new)
		}
		if seen, err := tcpEcho(t, p.b, echoAddr(newAddr), timeout); err != nil {
			t.Errorf("%s -> %s: the new address: %v", old, new, err)
		} else if seen.Addr().Unmap() != p.lb.Prefixes()[b2i(v6)].Addr() {
			t.Errorf("%s -> %s: a saw b as %v", old, new, seen)
		}
		if seen, err := tcpEcho(t, p.a, p.addrB(v6), timeout); err != nil || seen.Addr().Unmap() != newAddr {
			t.Errorf("%s -> %s: a's new connection: seen as %v, %v; want %v", old, new, seen, err, newAddr)
		}
	}
	if gw := p.la.Gateways()[0]; gw != netip.MustParseAddr("203.0.113.1") {
		t.Errorf("router end after renumbering: %v, want 203.0.113.1", gw)
	}
}

// MoveTo plugs a host into another router and subnet: it keeps its
// interface, gets new addresses and routes, and can move back.
func TestMoveTo(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	ctx := context.Background()
	r2 := p.lab.Router("r2")
	p.lab.Connect(r2, p.r, netip.MustParsePrefix("203.0.113.0/30"), netip.MustParsePrefix("2001:db8:ff::/64"))
	for _, route := range [][]string{
		{"-4", "route", "add", "203.0.113.128/25", "via", "203.0.113.2"},
		{"-6", "route", "add", "2001:db8:c::/64", "via", "2001:db8:ff::2"},
	} {
		if _, err := p.r.Run(ctx, "ip", route...); err != nil {
			t.Fatal(err)
		}
	}
	ec, err := dialEcho(t, p.a, p.addrB(false), timeout)
	if err != nil {
		t.Fatal(err)
	}
	must(t, p.la.SetDelay(20*time.Millisecond))

	must(t, p.la.MoveTo(r2, netip.MustParsePrefix("203.0.113.128/25"), netip.MustParsePrefix("2001:db8:c::/64")))
	if p.la.Router() != r2 || p.la.Interface() != "eth0" {
		t.Errorf("after the move: router %v, interface %s", p.la.Router(), p.la.Interface())
	}
	want := []netip.Prefix{netip.MustParsePrefix("203.0.113.130/25"), netip.MustParsePrefix("2001:db8:c::2/64")}
	if got := addrs(t, p.a); !slices.Equal(got, want) {
		t.Errorf("addresses after the move: %v, want %v", got, want)
	}
	for i, v6 := range []bool{false, true} {
		if seen, err := tcpEcho(t, p.a, p.addrB(v6), timeout); err != nil || seen.Addr().Unmap() != want[i].Addr() {
			t.Errorf("v6=%v: after the move: seen as %v, %v", v6, seen, err)
		}
	}
	if err := ec.echo("from the old network", 300*time.Millisecond); err == nil {
		t.Error("a connection from the old network still works")
	}
	// The delay stayed with the old network: its delay line is gone.
	// "N: d1: <...>" — match the name field, not a MAC address that happens to hold "d1:".
	if out, err := p.r.Run(ctx, "ip", "-o", "link"); err != nil || regexp.MustCompile(`(?m)^\d+: d1[:@]`).MatchString(out) {
		t.Errorf("the old router still has the delay line's TUN device d1: %v\n%s", err, out)
	}
	if out, err := p.r.Run(ctx, "ip", "rule"); err != nil || strings.Contains(out, "lookup 1001") {
		t.Errorf("the old router still has the delay line's rules: %v\n%s", err, out)
	}

	must(t, p.la.MoveTo(p.r, subA4, subA6))
	for _, v6 := range []bool{false, true} {
		if _, err := tcpEcho(t, p.a, p.addrB(v6), timeout); err != nil {
			t.Errorf("v6=%v: after moving back: %v", v6, err)
		}
	}
}

// Behind a NAT, the server sees the NAT's public address. Rebind gives each
// flow a new public port: a UDP flow carries on from it, an established TCP
// connection is reset, new ones work. SetPublic does the same with a new
// public address.
func TestNAT(t *testing.T) {
	t.Parallel()
	lab := netlab.New(t)
	inet := lab.Router("inet")
	nat := lab.NAT("home", inet, netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:ff::/64"))
	client, server := lab.Host("client"), lab.Host("server")
	lc := lab.Connect(client, nat.Router(), subA4, subA6)
	ls := lab.Connect(server, inet, subB4, subB6)
	srv := echoAddr(ls.Addr())
	startEcho(t, server)
	// IPv6 is masqueraded too.
	if seen, err := tcpEcho(t, client, echoAddr(ls.Prefixes()[1].Addr()), timeout); err != nil || seen.Addr() != nat.Uplink().Prefixes()[1].Addr() {
		t.Errorf("IPv6: the server sees the client as %v (%v), want %v", seen, err, nat.Uplink().Prefixes()[1].Addr())
	}
	public := netip.MustParseAddr("203.0.113.2")
	if nat.Public() != public {
		t.Fatalf("Public() = %v, want %v", nat.Public(), public)
	}

	ec, err := dialEcho(t, client, srv, timeout)
	if err != nil {
		t.Fatal(err)
	}
	if ec.seen.Addr() != public || ec.seen.Port() < 10000 || ec.seen.Port() > 14999 {
		t.Errorf("the server sees the client as %v, want %v with a port in 10000-14999", ec.seen, public)
	}
	u := newUDP(t, client, "udp4")
	seenU, _, err := u.ask(srv, "before", timeout)
	if err != nil || seenU.Addr() != public {
		t.Fatalf("UDP: the server sees the client as %v (%v), want %v", seenU, err, public)
	}
	// Nobody outside can connect in, even with a route to the inside.
	startEcho(t, client)
	if _, err := inet.Run(context.Background(), "ip", "route", "add", "192.0.2.0/24", "via", public.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := tcpEcho(t, server, echoAddr(lc.Addr()), time.Second); err == nil {
		t.Error("the server reached the client's inside address")
	}

	must(t, nat.Rebind())
	err = ec.echo("after rebind", timeout)
	t.Logf("established TCP connection after Rebind: %v", err)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("established TCP connection after Rebind: %v, want connection reset", err)
	}
	seenU2, _, err := u.ask(srv, "after rebind", timeout)
	if err != nil || seenU2.Addr() != public || seenU2.Port() == seenU.Port() {
		t.Errorf("UDP flow after Rebind: seen as %v (%v), want %v with a port other than %d", seenU2, err, public, seenU.Port())
	}
	ec2, err := dialEcho(t, client, srv, timeout)
	if err != nil || ec2.seen.Addr() != public || ec2.seen.Port() < 15000 || ec2.seen.Port() > 19999 {
		t.Fatalf("new TCP connection after Rebind: seen as %v (%v), want %v with a port in 15000-19999", ec2.seen, err, public)
	}

	newPublic := netip.MustParsePrefix("203.0.113.99/24")
	must(t, nat.SetPublic(newPublic))
	if nat.Public() != newPublic.Addr() {
		t.Errorf("Public() after SetPublic = %v, want %v", nat.Public(), newPublic.Addr())
	}
	err = ec2.echo("after SetPublic", timeout)
	t.Logf("established TCP connection after SetPublic: %v", err)
	if err == nil {
		t.Error("an established TCP connection survived the change of public address")
	}
	if seen, _, err := u.ask(srv, "after SetPublic", timeout); err != nil || seen.Addr() != newPublic.Addr() {
		t.Errorf("UDP flow after SetPublic: seen as %v (%v), want %v", seen, err, newPublic.Addr())
	}
	if seen, err := tcpEcho(t, client, srv, timeout); err != nil || seen.Addr() != newPublic.Addr() {
		t.Errorf("new TCP connection after SetPublic: seen as %v (%v), want %v", seen, err, newPublic.Addr())
	}
}
