package netmon

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// This file holds pure functions over rtnetlink bytes: no sockets, no
// syscalls, no build tag, so they are fuzzed and unit-tested on every OS.
// Netlink fields are in host byte order.
//
// syscall.ParseNetlinkMessage and syscall.ParseNetlinkRouteAttr are not used:
// the latter panics on a truncated payload and on a final attribute whose
// padded length runs past the message (rta_len 5 at the end of a message),
// and both allocate a slice per message and per attribute.

// Netlink and rtnetlink constants (linux/netlink.h, linux/rtnetlink.h,
// linux/if_addr.h, linux/if.h), written out so that this file builds on
// every OS.
const (
	nlmsgHdrLen = 16 // struct nlmsghdr
	ifinfoLen   = 16 // struct ifinfomsg
	ifaddrLen   = 8  // struct ifaddrmsg
	rtmsgLen    = 12 // struct rtmsg
	rtattrLen   = 4  // struct rtattr

	nlmsgNoop    = 0x1
	nlmsgError   = 0x2
	nlmsgDone    = 0x3
	nlmsgOverrun = 0x4

	rtmNewLink  = 16
	rtmDelLink  = 17
	rtmGetLink  = 18
	rtmNewAddr  = 20
	rtmDelAddr  = 21
	rtmGetAddr  = 22
	rtmNewRoute = 24
	rtmDelRoute = 25
	rtmGetRoute = 26

	nlmFRequest  = 0x1
	nlmFMulti    = 0x2
	nlmFDumpIntr = 0x10
	nlmFDump     = 0x300

	afUnspec = 0
	afInet   = 2
	afInet6  = 10

	iflaIfname  = 3
	iflaCarrier = 33
	ifaAddress  = 1
	ifaLocal    = 2
	ifaFlags    = 8
	rtaDst      = 1
	rtaOif      = 4
	rtaGateway  = 5
	rtaTable    = 15

	ifaFOptimistic = 0x04
	ifaFDadFailed  = 0x08
	ifaFTentative  = 0x40

	iffUp           = 0x1
	iffBroadcast    = 0x2
	iffLoopback     = 0x8
	iffPointToPoint = 0x10
	iffRunning      = 0x40
	iffMulticast    = 0x1000

	rtTableMain = 254
	rtnUnicast  = 1

	nlaTypeMask = 0x3fff // clears NLA_F_NESTED and NLA_F_NET_BYTEORDER

	// ifNameMax is IFNAMSIZ without the terminating NUL: the longest
	// interface name the kernel accepts, and the longest the parser does.
	ifNameMax = 15
)

// Parse errors. A message that fails to parse is skipped by the monitor,
// which then re-enumerates everything (a resync), as after lost events.
var (
	errShort     = errors.New("netmon: netlink message truncated")
	errBadLength = errors.New("netmon: netlink length field out of range")
	errBadAttr   = errors.New("netmon: netlink attribute malformed")
	errBadAddr   = errors.New("netmon: netlink address malformed")
	errBadName   = errors.New("netmon: netlink interface name too long")
)

// msgKind says which payload a message carried.
type msgKind uint8

const (
	kindOther msgKind = iota // a type the monitor ignores (NOOP, other families, ...)
	kindLink
	kindAddr
	kindRoute
	kindDone
	kindError
	kindOverrun
)

// message is one parsed netlink message. Only the payload of Kind is set.
type message struct {
	Kind  msgKind
	Type  uint16 // nlmsg_type
	Flags uint16 // nlmsg_flags
	Seq   uint32
	Pid   uint32
	Link  linkMsg
	Addr  addrMsg
	Route routeMsg
	Errno int32 // kindError: the negated errno the kernel sent (0 is an ACK)
}

// linkMsg is an RTM_NEWLINK or RTM_DELLINK message.
type linkMsg struct {
	Index int32
	Flags uint32 // IFF_* flags
	Name  string // IFLA_IFNAME; at most ifNameMax bytes
	// HasCarrier is true if the message carried IFLA_CARRIER, and Carrier
	// its value: the carrier as the driver set it. IFF_RUNNING follows it
	// through the kernel's link watch, which is rate-limited and lags by up
	// to a second when a link goes down and up again.
	HasCarrier, Carrier bool
}

// flags returns the link's IFF_* flags with IFF_RUNNING taken from the
// carrier when the message told it.
func (lm linkMsg) flags() uint32 {
	if !lm.HasCarrier {
		return lm.Flags
	}
	if lm.Carrier {
		return lm.Flags | iffRunning
	}
	return lm.Flags &^ iffRunning
}

// addrMsg is an RTM_NEWADDR or RTM_DELADDR message.
type addrMsg struct {
	Index  uint32
	Prefix netip.Prefix // IFA_LOCAL if present (the local end of a point-to-point link), else IFA_ADDRESS
	Flags  uint32       // IFA_F_* flags: IFA_FLAGS if present, else the 8-bit ifa_flags
	Scope  uint8
}

// usable reports whether the address may be used as a source: not while
// duplicate address detection runs (unless optimistic), not after it failed.
func (a addrMsg) usable() bool {
	if a.Flags&ifaFDadFailed != 0 {
		return false
	}
	return a.Flags&ifaFTentative == 0 || a.Flags&ifaFOptimistic != 0
}

// routeMsg is an RTM_NEWROUTE or RTM_DELROUTE message, reduced to what the
// monitor needs to follow default routes.
type routeMsg struct {
	Family  uint8
	DstLen  uint8
	Table   uint32 // RTA_TABLE if present, else rtm_table
	Type    uint8  // RTN_*
	Dst     netip.Addr
	Gateway netip.Addr
	Oif     uint32
}

// isDefault reports whether r is a unicast default route of the main table.
func (r routeMsg) isDefault() bool {
	return r.DstLen == 0 && r.Table == rtTableMain && r.Type == rtnUnicast
}

func align4(n int) int { return (n + 3) &^ 3 }

// parseMessage parses the netlink message at the start of b and returns it
// with the number of bytes it used (its length rounded up to 4, or what is
// left of b for an unpadded last message). Messages of types the monitor
// does not follow parse as kindOther. Limits: nlmsg_len must cover the
// header and fit in b; every attribute must fit in its message; interface
// names are at most ifNameMax bytes; addresses have their family's length.
// Nothing is allocated except the interface name.
func parseMessage(b []byte) (m message, n int, err error) {
	if len(b) < nlmsgHdrLen {
		return m, 0, errShort
	}
	l := int(binary.NativeEndian.Uint32(b))
	if l < nlmsgHdrLen || l > len(b) {
		return m, 0, errBadLength
	}
	n = min(align4(l), len(b))
	m.Type = binary.NativeEndian.Uint16(b[4:])
	m.Flags = binary.NativeEndian.Uint16(b[6:])
	m.Seq = binary.NativeEndian.Uint32(b[8:])
	m.Pid = binary.NativeEndian.Uint32(b[12:])
	p := b[nlmsgHdrLen:l]
	switch m.Type {
	case rtmNewLink, rtmDelLink:
		m.Kind = kindLink
		m.Link, err = parseLink(p)
	case rtmNewAddr, rtmDelAddr:
		m.Kind = kindAddr
		var ok bool
		m.Addr, ok, err = parseAddr(p)
		if err == nil && !ok {
			m.Kind = kindOther
		}
	case rtmNewRoute, rtmDelRoute:
		m.Kind = kindRoute
		m.Route, err = parseRoute(p)
	case nlmsgDone:
		m.Kind = kindDone
	case nlmsgOverrun:
		m.Kind = kindOverrun
	case nlmsgError:
		m.Kind = kindError
		if len(p) < 4 {
			return m, 0, errShort
		}
		m.Errno = int32(binary.NativeEndian.Uint32(p))
	}
	if err != nil {
		return message{}, 0, err
	}
	return m, n, nil
}

// nextAttr splits the attribute at the start of b from the rest.
func nextAttr(b []byte) (typ uint16, val, rest []byte, err error) {
	if len(b) < rtattrLen {
		return 0, nil, nil, errBadAttr
	}
	l := int(binary.NativeEndian.Uint16(b))
	if l < rtattrLen || l > len(b) {
		return 0, nil, nil, errBadAttr
	}
	typ = binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask
	return typ, b[rtattrLen:l], b[min(align4(l), len(b)):], nil
}

func parseLink(p []byte) (lm linkMsg, err error) {
	if len(p) < ifinfoLen {
		return lm, errShort
	}
	lm.Index = int32(binary.NativeEndian.Uint32(p[4:]))
	lm.Flags = binary.NativeEndian.Uint32(p[8:])
	for a := p[ifinfoLen:]; len(a) > 0; {
		var typ uint16
		var val []byte
		if typ, val, a, err = nextAttr(a); err != nil {
			return lm, err
		}
		switch typ {
		case iflaIfname:
			if i := indexNUL(val); i >= 0 {
				val = val[:i]
			}
			if len(val) > ifNameMax {
				return lm, errBadName
			}
			lm.Name = string(val)
		case iflaCarrier:
			if len(val) != 1 {
				return lm, errBadAttr
			}
			lm.HasCarrier, lm.Carrier = true, val[0] != 0
		}
	}
	return lm, nil
}

// parseAddr parses an ifaddrmsg and its attributes. ok is false for a
// family other than IPv4 and IPv6, which the monitor ignores.
func parseAddr(p []byte) (am addrMsg, ok bool, err error) {
	if len(p) < ifaddrLen {
		return am, false, errShort
	}
	family, bits := p[0], int(p[1])
	am.Flags = uint32(p[2])
	am.Scope = p[3]
	am.Index = binary.NativeEndian.Uint32(p[4:])
	size := 0
	switch family {
	case afInet:
		size = 4
	case afInet6:
		size = 16
	default:
		return am, false, nil
	}
	if bits > size*8 {
		return am, false, errBadAddr
	}
	var local, address netip.Addr
	for a := p[ifaddrLen:]; len(a) > 0; {
		var typ uint16
		var val []byte
		if typ, val, a, err = nextAttr(a); err != nil {
			return am, false, err
		}
		switch typ {
		case ifaAddress, ifaLocal:
			if len(val) != size {
				return am, false, errBadAddr
			}
			ip, _ := netip.AddrFromSlice(val)
			if typ == ifaLocal {
				local = ip
			} else {
				address = ip
			}
		case ifaFlags:
			if len(val) != 4 {
				return am, false, errBadAttr
			}
			am.Flags = binary.NativeEndian.Uint32(val)
		}
	}
	ip := local
	if !ip.IsValid() {
		ip = address
	}
	if !ip.IsValid() {
		return am, false, errBadAddr
	}
	am.Prefix = netip.PrefixFrom(ip, bits)
	return am, true, nil
}

func parseRoute(p []byte) (rm routeMsg, err error) {
	if len(p) < rtmsgLen {
		return rm, errShort
	}
	rm.Family, rm.DstLen = p[0], p[1]
	rm.Table = uint32(p[4])
	rm.Type = p[7]
	for a := p[rtmsgLen:]; len(a) > 0; {
		var typ uint16
		var val []byte
		if typ, val, a, err = nextAttr(a); err != nil {
			return rm, err
		}
		switch typ {
		case rtaTable, rtaOif:
			if len(val) != 4 {
				return rm, errBadAttr
			}
			v := binary.NativeEndian.Uint32(val)
			if typ == rtaTable {
				rm.Table = v
			} else {
				rm.Oif = v
			}
		case rtaDst, rtaGateway:
			// Only IP lengths; RTA_VIA and MPLS use other attributes.
			if len(val) != 4 && len(val) != 16 {
				return rm, errBadAddr
			}
			ip, _ := netip.AddrFromSlice(val)
			if typ == rtaDst {
				rm.Dst = ip
			} else {
				rm.Gateway = ip
			}
		}
	}
	return rm, nil
}

func indexNUL(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// Encoders. They build the messages the monitor sends (dump requests) and,
// in tests, the fake kernel messages the parsers are fed.

// appendHeader appends a netlink header for a message of payload bytes.
func appendHeader(b []byte, typ, flags uint16, seq uint32, payload int) []byte {
	b = binary.NativeEndian.AppendUint32(b, uint32(nlmsgHdrLen+payload))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	return binary.NativeEndian.AppendUint32(b, 0) // pid: the kernel's
}

// appendAttr appends an attribute padded to 4 bytes.
func appendAttr(b []byte, typ uint16, val []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(rtattrLen+len(val)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, val...)
	return append(b, make([]byte, align4(len(val))-len(val))...)
}

func attrLen(val int) int { return rtattrLen + align4(val) }

// appendDumpRequest appends a dump request of type typ (RTM_GETLINK,
// RTM_GETADDR or RTM_GETROUTE) for all address families.
func appendDumpRequest(b []byte, typ uint16, seq uint32) []byte {
	size := map[uint16]int{rtmGetLink: ifinfoLen, rtmGetAddr: ifaddrLen, rtmGetRoute: rtmsgLen}[typ]
	b = appendHeader(b, typ, nlmFRequest|nlmFDump, seq, size)
	return append(b, make([]byte, size)...) // family AF_UNSPEC, no filter
}

// appendLink appends an RTM_NEWLINK or RTM_DELLINK message.
func appendLink(b []byte, typ, flags uint16, seq uint32, lm linkMsg) []byte {
	name := append([]byte(lm.Name), 0)
	attrs := attrLen(len(name))
	if lm.HasCarrier {
		attrs += attrLen(1)
	}
	b = appendHeader(b, typ, flags, seq, ifinfoLen+attrs)
	b = append(b, afUnspec, 0, 0, 0) // family, pad, ifi_type (ARPHRD_NETROM = 0 is fine here)
	b = binary.NativeEndian.AppendUint32(b, uint32(lm.Index))
	b = binary.NativeEndian.AppendUint32(b, lm.Flags)
	b = binary.NativeEndian.AppendUint32(b, 0) // ifi_change
	b = appendAttr(b, iflaIfname, name)
	if lm.HasCarrier {
		carrier := byte(0)
		if lm.Carrier {
			carrier = 1
		}
		b = appendAttr(b, iflaCarrier, []byte{carrier})
	}
	return b
}

// appendAddr appends an RTM_NEWADDR or RTM_DELADDR message carrying
// IFA_ADDRESS, IFA_LOCAL for IPv4 (as the kernel does) and IFA_FLAGS.
func appendAddr(b []byte, typ, flags uint16, seq uint32, am addrMsg) []byte {
	ip := am.Prefix.Addr().AsSlice()
	family := uint8(afInet6)
	attrs := attrLen(len(ip)) + attrLen(4)
	if am.Prefix.Addr().Is4() {
		family = afInet
		attrs += attrLen(len(ip))
	}
	b = appendHeader(b, typ, flags, seq, ifaddrLen+attrs)
	b = append(b, family, uint8(am.Prefix.Bits()), uint8(am.Flags), am.Scope)
	b = binary.NativeEndian.AppendUint32(b, am.Index)
	b = appendAttr(b, ifaAddress, ip)
	if family == afInet {
		b = appendAttr(b, ifaLocal, ip)
	}
	return appendAttr(b, ifaFlags, binary.NativeEndian.AppendUint32(nil, am.Flags))
}

// appendRoute appends an RTM_NEWROUTE or RTM_DELROUTE message.
func appendRoute(b []byte, typ, flags uint16, seq uint32, rm routeMsg) []byte {
	var attrs []byte
	if rm.Dst.IsValid() {
		attrs = appendAttr(attrs, rtaDst, rm.Dst.AsSlice())
	}
	if rm.Gateway.IsValid() {
		attrs = appendAttr(attrs, rtaGateway, rm.Gateway.AsSlice())
	}
	attrs = appendAttr(attrs, rtaOif, binary.NativeEndian.AppendUint32(nil, rm.Oif))
	attrs = appendAttr(attrs, rtaTable, binary.NativeEndian.AppendUint32(nil, rm.Table))
	b = appendHeader(b, typ, flags, seq, rtmsgLen+len(attrs))
	table := uint8(rtTableMain)
	if rm.Table < 256 {
		table = uint8(rm.Table)
	}
	b = append(b, rm.Family, rm.DstLen, 0, 0, table, 0, 0, rm.Type)
	b = binary.NativeEndian.AppendUint32(b, 0) // rtm_flags
	return append(b, attrs...)
}

// appendDone appends the NLMSG_DONE that ends a dump.
func appendDone(b []byte, seq uint32) []byte {
	b = appendHeader(b, nlmsgDone, nlmFMulti, seq, 4)
	return binary.NativeEndian.AppendUint32(b, 0)
}

// classify reports whether a datagram from the event socket may change the
// State (relevant): it carries a link or address message or a default
// route, or it does not parse (then everything is re-read, to be safe).
// urgent is true if something may have been lost: an address or a default
// route deleted, an address reported unusable (DAD again after a link
// flap, or DAD failed), a link deleted, down or without carrier. Losses
// skip the debounce, so that connections using the address learn at once.
func classify(b []byte) (relevant, urgent bool) {
	for len(b) > 0 {
		m, n, err := parseMessage(b)
		if err != nil {
			return true, true
		}
		b = b[n:]
		switch m.Kind {
		case kindOverrun:
			return true, true
		case kindAddr:
			relevant = true
			urgent = urgent || m.Type == rtmDelAddr || !m.Addr.usable()
		case kindLink:
			relevant = true
			f := m.Link.flags()
			urgent = urgent || m.Type == rtmDelLink || f&iffUp == 0 || f&iffRunning == 0
		case kindRoute:
			if m.Route.isDefault() {
				relevant = true
				urgent = urgent || m.Type == rtmDelRoute
			}
		}
	}
	return relevant, urgent
}
