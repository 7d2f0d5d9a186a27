package udpnotify

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// socket is a UDP socket that reports each datagram's local destination address and
// interface (IP_PKTINFO / IPV6_PKTINFO) and can send from a chosen local address, so that
// a host with several addresses answers from the one the peer wrote to.
type socket struct {
	c  *net.UDPConn
	v6 bool // an AF_INET6 socket (possibly dual-stack)
}

// recvInfo is what the kernel says about one received datagram.
type recvInfo struct {
	From    netip.AddrPort // the sender, IPv4 unmapped
	Dst     netip.Addr     // the local address it was sent to (invalid if unknown)
	IfIndex int            // the interface it arrived on (0 if unknown)
}

func newSocket(c *net.UDPConn) (*socket, error) {
	s := &socket{c: c}
	if la, ok := c.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() == nil {
		s.v6 = true
	}
	var err error
	if s.v6 {
		err = ipv6.NewPacketConn(c).SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true)
	} else {
		err = ipv4.NewPacketConn(c).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// oobLen is enough for one PKTINFO control message of either family.
const oobLen = 128

// read reads one datagram into b; oob is scratch space of oobLen bytes.
func (s *socket) read(b, oob []byte) (int, recvInfo, error) {
	n, oobn, _, from, err := s.c.ReadMsgUDPAddrPort(b, oob)
	if err != nil {
		return 0, recvInfo{}, err
	}
	ri := recvInfo{From: netip.AddrPortFrom(from.Addr().Unmap(), from.Port())}
	var dst []byte
	if s.v6 {
		var cm ipv6.ControlMessage
		if cm.Parse(oob[:oobn]) == nil {
			dst, ri.IfIndex = cm.Dst, cm.IfIndex
		}
	} else {
		var cm ipv4.ControlMessage
		if cm.Parse(oob[:oobn]) == nil {
			dst, ri.IfIndex = cm.Dst, cm.IfIndex
		}
	}
	if a, ok := netip.AddrFromSlice(dst); ok {
		ri.Dst = a.Unmap()
	}
	return n, ri, nil
}

// write sends b to `to`, from src if it is valid. If the kernel refuses src (the address
// has gone), it sends again letting the kernel choose, and reports srcRefused.
func (s *socket) write(b []byte, to netip.AddrPort, src netip.Addr) (srcRefused bool, err error) {
	if src.IsValid() {
		var oob []byte
		switch {
		case src.Is4() && to.Addr().Unmap().Is4():
			// Also on a dual-stack socket: an IPv6 PKTINFO with a v4-mapped source is ignored.
			oob = (&ipv4.ControlMessage{Src: src.AsSlice()}).Marshal()
		case src.Is6() && to.Addr().Is6() && !to.Addr().Is4In6() && s.v6:
			oob = (&ipv6.ControlMessage{Src: src.AsSlice()}).Marshal()
		}
		if oob != nil {
			if _, _, err := s.c.WriteMsgUDPAddrPort(b, oob, to); err == nil {
				return false, nil
			}
			srcRefused = true
		}
	}
	_, _, err = s.c.WriteMsgUDPAddrPort(b, nil, to)
	return srcRefused, err
}

// port returns the socket's local port.
func (s *socket) port() uint16 {
	if la, ok := s.c.LocalAddr().(*net.UDPAddr); ok {
		return uint16(la.Port)
	}
	return 0
}
