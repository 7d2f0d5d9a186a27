package udpnotify

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/rockudp/rockudp/tunnel"
)

// Wire-format constants; docs/udpnotify.md is the specification.
const (
	// Version is the session protocol version carried in Hello and Welcome.
	Version = 1

	// MaxMessageLen is the longest rock message (type byte and body), except Datagram.
	MaxMessageLen = 1024

	// MaxDatagramMessageLen is the longest Datagram message (type byte and a tunnel frame).
	MaxDatagramMessageLen = 65535

	// MaxFallbackPayload is the largest datagram a Datagram message carries.
	MaxFallbackPayload = MaxDatagramMessageLen - 1 - tunnel.HeaderLen

	// MaxAddrs is the most addresses one Hello or Addr message carries.
	MaxAddrs = 16

	// TokenLen is the length of a validation token.
	TokenLen = 16

	// NonceLen is the length of a validation nonce.
	NonceLen = 8

	// SessionIDLen is the length of a session ID.
	SessionIDLen = 16

	// datagramHeaderLen is magic (4) | type (1) | session ID (16).
	datagramHeaderLen = 4 + 1 + SessionIDLen
)

// datagramMagic starts every control datagram. Its first byte, 0xFF, is a version-3 RTP
// header, which does not exist, so control datagrams never look like RTP.
var datagramMagic = [4]byte{0xFF, 'r', 'u', 'n'}

// MsgType is the type of a message on the rock.
type MsgType uint8

// Rock message types.
const (
	MsgHello     MsgType = 1 // receiver → sender: version, the receiver's UDP addresses
	MsgWelcome   MsgType = 2 // sender → receiver: version, session ID, the sender's UDP port
	MsgAddr      MsgType = 3 // receiver → sender: the receiver's UDP addresses now
	MsgChallenge MsgType = 4 // sender → receiver: echo this token from that address
	MsgProbeAck  MsgType = 5 // receiver → sender: the probe token that reached me over UDP
	MsgValidated MsgType = 6 // sender → receiver: I now send to this address
	MsgDatagram  MsgType = 7 // sender → receiver: a datagram carried over the rock (fallback)
)

// fallbackFlow is the tunnel flow ID of the datagrams a session carries over its rock.
const fallbackFlow = 1

// DatagramType is the type of a control datagram on the UDP path.
type DatagramType uint8

// Control datagram types.
const (
	DgKeepalive DatagramType = 1 // receiver → sender: keeps NAT mappings open, shows the source
	DgEcho      DatagramType = 2 // receiver → sender: the token of a Challenge
	DgProbe     DatagramType = 3 // sender → candidate address: acknowledge this token over the rock
)

// ErrMalformed is wrapped by every error the parsers return.
var ErrMalformed = errors.New("udpnotify: malformed message")

// Message is one message on the rock. Which fields are set depends on Type.
type Message struct {
	Type MsgType
	// Version (Hello, Welcome).
	Version uint8
	// Addrs are the receiver's UDP addresses (Hello, Addr).
	Addrs []netip.AddrPort
	// SessionID (Welcome).
	SessionID [SessionIDLen]byte
	// Port is the sender's UDP port (Welcome).
	Port uint16
	// Keepalive is the longest pause between keepalives the sender wants, in milliseconds; 0
	// leaves it to the receiver (Welcome).
	Keepalive uint32
	// MaxAge is the sender's age limit for the datagrams it carries over the rock, in
	// milliseconds; 0: none (Welcome).
	MaxAge uint32
	// Addr is the address being validated (Challenge) or validated (Validated).
	Addr netip.AddrPort
	// Nonce and Token (Challenge, ProbeAck).
	Nonce [NonceLen]byte
	Token [TokenLen]byte
	// Time is the sender's millisecond clock when it took the datagram (Datagram).
	Time uint32
	// Payload is the datagram (Datagram); after ParseMessage it aliases the parsed bytes.
	Payload []byte
}

// AppendMessage appends m, framed (2-byte length, then type and body), to b. It does not
// validate m; ParseMessage does.
func AppendMessage(b []byte, m Message) []byte {
	start := len(b)
	b = append(b, 0, 0, byte(m.Type))
	switch m.Type {
	case MsgHello:
		b = append(b, m.Version)
		b = appendAddrs(b, m.Addrs)
	case MsgWelcome:
		b = append(b, m.Version)
		b = append(b, m.SessionID[:]...)
		b = binary.BigEndian.AppendUint16(b, m.Port)
		b = binary.BigEndian.AppendUint32(b, m.Keepalive)
		b = binary.BigEndian.AppendUint32(b, m.MaxAge)
	case MsgAddr:
		b = appendAddrs(b, m.Addrs)
	case MsgChallenge:
		b = append(b, m.Nonce[:]...)
		b = appendAddr(b, m.Addr)
		b = append(b, m.Token[:]...)
	case MsgProbeAck:
		b = append(b, m.Nonce[:]...)
		b = append(b, m.Token[:]...)
	case MsgValidated:
		b = appendAddr(b, m.Addr)
	case MsgDatagram:
		b = tunnel.AppendHeader(b, tunnel.FrameData, fallbackFlow, m.Time, len(m.Payload))
		b = append(b, m.Payload...)
	}
	binary.BigEndian.PutUint16(b[start:], uint16(len(b)-start-2))
	return b
}

// ErrShort is returned by ParseMessage when b holds the valid beginning of a message but not
// all of it: read more and parse again. It does not wrap ErrMalformed.
var ErrShort = errors.New("udpnotify: truncated message")

// ParseMessage parses the framed message at the start of b and returns it with the number of
// bytes it took. The length is checked against MaxMessageLen (MaxDatagramMessageLen for a
// Datagram) before the body is awaited.
func ParseMessage(b []byte) (Message, int, error) {
	if len(b) < 3 {
		if len(b) == 2 && binary.BigEndian.Uint16(b) == 0 {
			return Message{}, 0, fmt.Errorf("%w: length 0", ErrMalformed)
		}
		return Message{}, 0, ErrShort
	}
	n := int(binary.BigEndian.Uint16(b))
	if n < 1 || (n > MaxMessageLen && MsgType(b[2]) != MsgDatagram) {
		return Message{}, 0, fmt.Errorf("%w: length %d outside 1..%d", ErrMalformed, n, MaxMessageLen)
	}
	if len(b) < 2+n {
		return Message{}, 0, ErrShort
	}
	m, err := parseBody(b[2 : 2+n])
	if err != nil {
		return Message{}, 0, err
	}
	return m, 2 + n, nil
}

func parseBody(b []byte) (Message, error) {
	m := Message{Type: MsgType(b[0])}
	r := reader{b: b[1:]}
	switch m.Type {
	case MsgHello:
		m.Version = r.byte()
		m.Addrs = r.addrs()
	case MsgWelcome:
		m.Version = r.byte()
		r.copy(m.SessionID[:])
		m.Port = r.uint16()
		m.Keepalive = r.uint32()
		m.MaxAge = r.uint32()
	case MsgAddr:
		m.Addrs = r.addrs()
	case MsgChallenge:
		r.copy(m.Nonce[:])
		m.Addr = r.addr()
		r.copy(m.Token[:])
	case MsgProbeAck:
		r.copy(m.Nonce[:])
		r.copy(m.Token[:])
	case MsgValidated:
		m.Addr = r.addr()
	case MsgDatagram:
		f, n, err := tunnel.ParseFrame(r.b)
		switch {
		case err != nil:
			r.err = err
		case n != len(r.b):
			r.err = fmt.Errorf("frame of %d bytes in a body of %d", n, len(r.b))
		case f.Type != tunnel.FrameData || f.Flow != fallbackFlow:
			r.err = fmt.Errorf("frame type %v flow %d", f.Type, f.Flow)
		default:
			m.Time, m.Payload = f.Time, f.Payload
			r.b = nil
		}
	default:
		return Message{}, fmt.Errorf("%w: unknown message type %d", ErrMalformed, m.Type)
	}
	if r.err != nil {
		return Message{}, fmt.Errorf("%w: type %d: %v", ErrMalformed, m.Type, r.err)
	}
	if len(r.b) != 0 {
		return Message{}, fmt.Errorf("%w: type %d: %d trailing bytes", ErrMalformed, m.Type, len(r.b))
	}
	if (m.Type == MsgHello || m.Type == MsgWelcome) && m.Version == 0 {
		return Message{}, fmt.Errorf("%w: version 0", ErrMalformed)
	}
	return m, nil
}

// Datagram is a control datagram.
type Datagram struct {
	Type      DatagramType
	SessionID [SessionIDLen]byte
	// Nonce and Token (Echo, Probe).
	Nonce [NonceLen]byte
	Token [TokenLen]byte
}

// IsControl reports whether b starts with the control-datagram magic: a datagram of the
// session's, never the application's.
func IsControl(b []byte) bool {
	return len(b) >= 4 && [4]byte(b[:4]) == datagramMagic
}

// AppendDatagram appends the encoding of d to b.
func AppendDatagram(b []byte, d Datagram) []byte {
	b = append(b, datagramMagic[:]...)
	b = append(b, byte(d.Type))
	b = append(b, d.SessionID[:]...)
	if d.Type == DgEcho || d.Type == DgProbe {
		b = append(b, d.Nonce[:]...)
		b = append(b, d.Token[:]...)
	}
	return b
}

// ParseDatagram parses a whole control datagram.
func ParseDatagram(b []byte) (Datagram, error) {
	if !IsControl(b) {
		return Datagram{}, fmt.Errorf("%w: not a control datagram", ErrMalformed)
	}
	if len(b) < datagramHeaderLen {
		return Datagram{}, fmt.Errorf("%w: datagram of %d bytes", ErrMalformed, len(b))
	}
	d := Datagram{Type: DatagramType(b[4])}
	copy(d.SessionID[:], b[5:datagramHeaderLen])
	body := b[datagramHeaderLen:]
	switch d.Type {
	case DgKeepalive:
		if len(body) != 0 {
			return Datagram{}, fmt.Errorf("%w: keepalive with %d body bytes", ErrMalformed, len(body))
		}
	case DgEcho, DgProbe:
		if len(body) != NonceLen+TokenLen {
			return Datagram{}, fmt.Errorf("%w: datagram type %d with %d body bytes", ErrMalformed, d.Type, len(body))
		}
		copy(d.Nonce[:], body)
		copy(d.Token[:], body[NonceLen:])
	default:
		return Datagram{}, fmt.Errorf("%w: unknown datagram type %d", ErrMalformed, d.Type)
	}
	return d, nil
}

// appendAddr appends family (4 or 6) | address | port.
func appendAddr(b []byte, a netip.AddrPort) []byte {
	ip := a.Addr().Unmap()
	if ip.Is4() {
		b = append(b, 4)
		v := ip.As4()
		b = append(b, v[:]...)
	} else {
		b = append(b, 6)
		v := ip.As16()
		b = append(b, v[:]...)
	}
	return binary.BigEndian.AppendUint16(b, a.Port())
}

func appendAddrs(b []byte, as []netip.AddrPort) []byte {
	b = append(b, byte(len(as)))
	for _, a := range as {
		b = appendAddr(b, a)
	}
	return b
}

// reader consumes a body; the first error sticks and later reads return zero values.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = fmt.Errorf("%d bytes left, want %d", len(r.b), n)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() uint8 {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) uint16() uint16 {
	if v := r.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) uint32() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) copy(dst []byte) {
	if v := r.take(len(dst)); v != nil {
		copy(dst, v)
	}
}

func (r *reader) addr() netip.AddrPort {
	var ip netip.Addr
	switch f := r.byte(); f {
	case 4:
		if v := r.take(4); v != nil {
			ip = netip.AddrFrom4([4]byte(v))
		}
	case 6:
		if v := r.take(16); v != nil {
			ip = netip.AddrFrom16([16]byte(v))
		}
	default:
		if r.err == nil {
			r.err = fmt.Errorf("address family %d", f)
		}
	}
	port := r.uint16()
	if r.err != nil {
		return netip.AddrPort{}
	}
	if ip.Is4In6() || ip.IsUnspecified() || ip.IsMulticast() || port == 0 {
		r.err = fmt.Errorf("unusable address %v port %d", ip, port)
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip, port)
}

func (r *reader) addrs() []netip.AddrPort {
	n := int(r.byte())
	if r.err != nil {
		return nil
	}
	if n > MaxAddrs {
		r.err = fmt.Errorf("%d addresses, at most %d", n, MaxAddrs)
		return nil
	}
	if len(r.b) < n*7 { // the shortest address is 7 bytes: check before allocating
		r.err = fmt.Errorf("%d addresses in %d bytes", n, len(r.b))
		return nil
	}
	as := make([]netip.AddrPort, 0, n)
	for range n {
		a := r.addr()
		if r.err != nil {
			return nil
		}
		as = append(as, a)
	}
	return as
}
