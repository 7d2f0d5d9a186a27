//go:build linux

package udpnotify

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/rockudp/rockudp/test/netlab"
)

// TestLabSourceAddress: a host with two addresses on two interfaces (192.0.2.2 on eth0, its
// default route, and 203.0.113.2 on eth1) answers a peer that wrote to 203.0.113.2 from
// 203.0.113.2, and knows the datagram came in on eth1; the kernel alone would have answered
// from 192.0.2.2. (The session tests run the whole session over loopback addresses; this is
// the socket layer between real interfaces, in the network lab.)
func TestLabSourceAddress(t *testing.T) {
	lab := netlab.New(t)
	r := lab.Router("r")
	multi, peer := lab.Host("multi"), lab.Host("peer")
	lab.Connect(multi, r, netip.MustParsePrefix("192.0.2.0/24"))
	second := lab.Connect(multi, r, netip.MustParsePrefix("203.0.113.0/24"))
	lab.Connect(peer, r, netip.MustParsePrefix("198.51.100.0/24"))

	var sc *net.UDPConn
	var ifIndex int
	if err := multi.Do(func() error {
		var err error
		if sc, err = net.ListenUDP("udp", &net.UDPAddr{}); err != nil { // dual-stack wildcard
			return err
		}
		ifi, err := net.InterfaceByName(second.Interface())
		if err == nil {
			ifIndex = ifi.Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	s, err := newSocket(sc)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := peer.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	peerAddr := netip.MustParseAddrPort(pc.LocalAddr().String())
	peerAddr = netip.AddrPortFrom(netip.MustParseAddr("198.51.100.2"), peerAddr.Port())
	to := &net.UDPAddr{IP: net.ParseIP("203.0.113.2"), Port: int(s.port())}

	// A datagram to the second address: the socket learns where it arrived.
	deadline := time.Now().Add(waitFor)
	sc.SetReadDeadline(deadline)
	pc.SetReadDeadline(deadline)
	b, oob := make([]byte, 100), make([]byte, oobLen)
	var ri recvInfo
	for { // the first datagrams may go before the lab's routes are in place
		pc.WriteTo([]byte("hello"), to)
		sc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, ri, err = s.read(b, oob); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if ri.From != peerAddr || ri.Dst != netip.MustParseAddr("203.0.113.2") || ri.IfIndex != ifIndex {
		t.Fatalf("received %+v, want from %v at 203.0.113.2 on interface %d", ri, peerAddr, ifIndex)
	}

	// The kernel's own choice for the peer is the default route's address...
	if _, err := s.write([]byte("kernel"), peerAddr, netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	_, from, err := pc.ReadFrom(b)
	if err != nil || from.(*net.UDPAddr).IP.String() != "192.0.2.2" {
		t.Fatalf("kernel's source %v, %v", from, err)
	}
	// ...and the answer pinned to the destination the peer used leaves from it.
	if refused, err := s.write([]byte("reply"), peerAddr, ri.Dst); err != nil || refused {
		t.Fatalf("pinned write: refused %v, %v", refused, err)
	}
	n, from, err := pc.ReadFrom(b)
	if err != nil || string(b[:n]) != "reply" || from.(*net.UDPAddr).IP.String() != "203.0.113.2" {
		t.Fatalf("reply %q from %v, %v", b[:n], from, err)
	}
	// An address the host does not have is refused, and the datagram still goes.
	if refused, err := s.write([]byte("fallback"), peerAddr, netip.MustParseAddr("203.0.113.77")); err != nil || !refused {
		t.Fatalf("unknown source: refused %v, %v", refused, err)
	}
	if n, _, err := pc.ReadFrom(b); err != nil || string(b[:n]) != "fallback" {
		t.Fatalf("after a refused source: %q, %v", b[:n], err)
	}
}
