package udpnotify

import (
	"net"
	"net/netip"
	"os"
	"time"
)

// PacketConn is a session's datagram interface, a net.PacketConn over the session's UDP
// socket that always talks to the peer's current validated address:
//
//   - WriteTo ignores its address argument and sends to the peer (Session.Peer); Write does
//     the same without the pretence. On the sending side a write before the first validated
//     address fails with ErrNoPath; with Config.Fallback, writes go over the rock while UDP
//     does not work (then they queue, and never fail for want of a path). Datagrams go out from the local address the peer last
//     wrote to, so a host with several addresses answers from the right one.
//   - ReadFrom returns only the application's datagrams from the peer's validated address;
//     datagrams from anywhere else are dropped and counted (Stats.Unvalidated). ReadDatagram
//     also says at which local address and interface each one arrived.
//
// Close closes the whole session. PacketConn is safe for concurrent use.
type PacketConn struct {
	s   *Session
	rdl *deadline
}

var _ net.PacketConn = (*PacketConn)(nil)

// Info describes a received datagram.
type Info struct {
	// From is the sender's address.
	From netip.AddrPort
	// Dst is the local address the datagram was sent to (from IP_PKTINFO or IPV6_PKTINFO).
	Dst netip.Addr
	// IfIndex is the index of the interface it arrived on.
	IfIndex int
	// ViaRock is true for a datagram the sender carried over the rock (Config.Fallback);
	// Dst and IfIndex are then unknown.
	ViaRock bool
}

// ReadDatagram reads the next application datagram into b and says where it came from and
// where it arrived. A datagram longer than b is truncated.
func (p *PacketConn) ReadDatagram(b []byte) (int, Info, error) {
	select {
	case <-p.s.done:
		return 0, Info{}, ErrClosed
	case <-p.rdl.wait():
		return 0, Info{}, os.ErrDeadlineExceeded
	default:
	}
	select {
	case d := <-p.s.appq:
		return copy(b, d.b), Info{From: d.info.From, Dst: d.info.Dst, IfIndex: d.info.IfIndex, ViaRock: d.viaRock}, nil
	case <-p.s.done:
		return 0, Info{}, ErrClosed
	case <-p.rdl.wait():
		return 0, Info{}, os.ErrDeadlineExceeded
	}
}

// ReadFrom reads the next application datagram from the peer.
func (p *PacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, info, err := p.ReadDatagram(b)
	if err != nil {
		return 0, nil, err
	}
	return n, net.UDPAddrFromAddrPort(info.From), nil
}

// WriteTo sends b to the peer's current validated address. addr is ignored: the session,
// not the caller, knows where the peer is.
func (p *PacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	return p.Write(b)
}

// Write sends b to the peer's current validated address.
func (p *PacketConn) Write(b []byte) (int, error) {
	s := p.s
	select {
	case <-s.done:
		return 0, ErrClosed
	default:
	}
	s.mu.Lock()
	to, src, fb := s.peer, s.src, s.fallbackLocked(time.Now())
	s.mu.Unlock()
	if fb {
		s.queueFallback(b)
		return len(b), nil
	}
	if !to.IsValid() {
		return 0, ErrNoPath
	}
	refused, err := s.sock.write(b, to, src)
	if refused {
		s.mu.Lock()
		if s.src == src {
			s.src, s.srcIf = netip.Addr{}, 0
		}
		s.mu.Unlock()
	}
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close closes the session.
func (p *PacketConn) Close() error { return p.s.Close() }

// LocalAddr returns the UDP socket's local address.
func (p *PacketConn) LocalAddr() net.Addr { return p.s.LocalAddr() }

// SetDeadline sets the read and write deadlines.
func (p *PacketConn) SetDeadline(t time.Time) error {
	p.rdl.set(t)
	return p.s.sock.c.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline; it applies to pending reads.
func (p *PacketConn) SetReadDeadline(t time.Time) error {
	p.rdl.set(t)
	return nil
}

// SetWriteDeadline sets the write deadline of the UDP socket.
func (p *PacketConn) SetWriteDeadline(t time.Time) error {
	return p.s.sock.c.SetWriteDeadline(t)
}
