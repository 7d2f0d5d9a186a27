package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Wire-format constants; docs/protocol.md section 4 is the specification.
const (
	// Version is the tunnel protocol version carried in Hello.
	Version = 1

	// HeaderLen is the length of every frame's fixed header:
	// type (1) | flow (4) | time (4) | length (2).
	HeaderLen = 11

	// MaxPayload is the largest frame body: the largest UDP payload there is
	// (65,535 − 8-byte UDP header; IPv6 without jumbograms). Longer lengths
	// are malformed.
	MaxPayload = 65535 - 8

	// MaxPayloadIPv4 is the largest UDP payload on IPv4 (65,535 − 20-byte
	// IP header − 8-byte UDP header).
	MaxPayloadIPv4 = 65535 - 20 - 8

	// MaxFrameLen is the longest frame: a header and the largest payload.
	MaxFrameLen = HeaderLen + MaxPayload

	helloLen = 7 // version (1) | max age ms (4) | max datagram (2)
	closeLen = 1 // reason
)

// FrameType is the first byte of a frame.
type FrameType uint8

// Frame types.
const (
	// FrameHello is the first frame each side sends: its version, the max-age
	// it applies to the datagrams it sends, and the largest datagram it can
	// send to its UDP peers. Flow is 0.
	FrameHello FrameType = 1
	// FrameOpen (client to server) opens a flow; its body is empty.
	FrameOpen FrameType = 2
	// FrameClose (either way) ends a flow; its body is one CloseReason byte.
	FrameClose FrameType = 3
	// FrameData carries one datagram of a flow. Time is the sender's clock,
	// in milliseconds modulo 2^32, when the datagram was read from UDP.
	FrameData FrameType = 4
)

// String returns the frame type's name, e.g. "data".
func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "hello"
	case FrameOpen:
		return "open"
	case FrameClose:
		return "close"
	case FrameData:
		return "data"
	}
	return fmt.Sprintf("FrameType(%d)", uint8(t))
}

// CloseReason says why a flow was closed.
type CloseReason uint8

// Reasons carried by FrameClose. Receivers treat unknown values as
// CloseNormal.
const (
	CloseNormal    CloseReason = 0 // the flow ended (the sender shut down)
	CloseIdle      CloseReason = 1 // the idle timeout expired
	CloseFlowLimit CloseReason = 2 // the server has no room for the flow
	CloseError     CloseReason = 3 // the server could not open a socket for it
)

// String returns the reason's name, e.g. "idle".
func (r CloseReason) String() string {
	switch r {
	case CloseNormal:
		return "normal"
	case CloseIdle:
		return "idle"
	case CloseFlowLimit:
		return "flow-limit"
	case CloseError:
		return "error"
	}
	return fmt.Sprintf("CloseReason(%d)", uint8(r))
}

// Frame is one parsed frame. Payload aliases the parsed buffer.
type Frame struct {
	Type    FrameType
	Flow    uint32 // flow id; 0 only in Hello
	Time    uint32 // Data: sender's millisecond clock; 0 otherwise
	Payload []byte // the body
}

// Hello is the body of FrameHello.
type Hello struct {
	Version uint8
	// MaxAge is the sender's max-age policy for the datagrams it sends
	// (millisecond resolution); 0 keeps every datagram.
	MaxAge time.Duration
	// MaxDatagram is the largest datagram the sender can send to its UDP
	// peers; the other side drops longer ones before sending them.
	MaxDatagram int
}

// ErrMalformed is wrapped by every error ParseFrame returns for bytes that
// can never become a valid frame. The tunnel closes the rock when it sees one.
var ErrMalformed = errors.New("tunnel: malformed frame")

// ErrTruncated is returned by ParseFrame when b holds a valid beginning of a
// frame but not all of it: read more bytes and parse again.
var ErrTruncated = errors.New("tunnel: truncated frame")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// AppendHeader appends a frame header for a body of n bytes to b.
func AppendHeader(b []byte, t FrameType, flow, time uint32, n int) []byte {
	b = append(b, byte(t))
	b = binary.BigEndian.AppendUint32(b, flow)
	b = binary.BigEndian.AppendUint32(b, time)
	return binary.BigEndian.AppendUint16(b, uint16(n))
}

// AppendFrame appends the encoding of f to b. It does not validate f;
// ParseFrame does.
func AppendFrame(b []byte, f Frame) []byte {
	b = AppendHeader(b, f.Type, f.Flow, f.Time, len(f.Payload))
	return append(b, f.Payload...)
}

// ParseFrame parses the frame at the start of b and returns it and its
// length. The header is checked before the body is awaited: an unknown type,
// a length over MaxPayload or a body length wrong for the type is
// ErrMalformed at once; a frame that is valid so far but incomplete is
// ErrTruncated. Payload aliases b; nothing is allocated.
func ParseFrame(b []byte) (Frame, int, error) {
	if len(b) < HeaderLen {
		return Frame{}, 0, ErrTruncated
	}
	f := Frame{
		Type: FrameType(b[0]),
		Flow: binary.BigEndian.Uint32(b[1:5]),
		Time: binary.BigEndian.Uint32(b[5:9]),
	}
	n := int(binary.BigEndian.Uint16(b[9:11]))
	if n > MaxPayload {
		return Frame{}, 0, malformed("length %d over the limit of %d", n, MaxPayload)
	}
	switch f.Type {
	case FrameHello:
		if f.Flow != 0 || n < helloLen {
			return Frame{}, 0, malformed("hello with flow %d and length %d", f.Flow, n)
		}
	case FrameOpen:
		if f.Flow == 0 || n != 0 {
			return Frame{}, 0, malformed("open with flow %d and length %d", f.Flow, n)
		}
	case FrameClose:
		if f.Flow == 0 || n != closeLen {
			return Frame{}, 0, malformed("close with flow %d and length %d", f.Flow, n)
		}
	case FrameData:
		if f.Flow == 0 {
			return Frame{}, 0, malformed("data on flow 0")
		}
	default:
		return Frame{}, 0, malformed("unknown type %d", uint8(f.Type))
	}
	if f.Type != FrameData && f.Time != 0 {
		return Frame{}, 0, malformed("%v with time %d", f.Type, f.Time)
	}
	if len(b) < HeaderLen+n {
		return Frame{}, 0, ErrTruncated
	}
	f.Payload = b[HeaderLen : HeaderLen+n : HeaderLen+n]
	return f, HeaderLen + n, nil
}

// AppendHello appends a complete Hello frame to b. MaxAge is rounded up to a
// whole millisecond and saturates at 2^32−1 ms (about 49 days).
func AppendHello(b []byte, h Hello) []byte {
	b = AppendHeader(b, FrameHello, 0, 0, helloLen)
	b = append(b, h.Version)
	b = binary.BigEndian.AppendUint32(b, durationMs(h.MaxAge))
	return binary.BigEndian.AppendUint16(b, uint16(min(max(h.MaxDatagram, 0), MaxPayload)))
}

// ParseHello parses the body of a FrameHello. Bytes after the known fields
// are ignored (room for later versions).
func ParseHello(body []byte) (Hello, error) {
	if len(body) < helloLen {
		return Hello{}, malformed("hello body of %d bytes", len(body))
	}
	h := Hello{
		Version:     body[0],
		MaxAge:      time.Duration(binary.BigEndian.Uint32(body[1:5])) * time.Millisecond,
		MaxDatagram: int(binary.BigEndian.Uint16(body[5:7])),
	}
	if h.Version != Version {
		return Hello{}, malformed("version %d, want %d", h.Version, Version)
	}
	if h.MaxDatagram > MaxPayload {
		return Hello{}, malformed("max datagram %d over %d", h.MaxDatagram, MaxPayload)
	}
	return h, nil
}

// AppendClose appends a complete Close frame for flow to b.
func AppendClose(b []byte, flow uint32, r CloseReason) []byte {
	b = AppendHeader(b, FrameClose, flow, 0, closeLen)
	return append(b, byte(r))
}

// durationMs converts d to whole milliseconds, rounding up, saturating at
// 2^32−1.
func durationMs(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	if ms > 1<<32-1 {
		return 1<<32 - 1
	}
	return uint32(ms)
}
