package control

import (
	"encoding/binary"
	"errors"
)

// Wire format of the TCP fallback of the control channel (docs/protocol.md, section 3.5).
const (
	// TCPEnhancementName and TCPEnhancementVersion name the EDP enhancement that opens a
	// control channel over TCP: "rockctl/1".
	TCPEnhancementName    = "rockctl"
	TCPEnhancementVersion = 1

	// NonceLen is the size of the nonces of the TCP channel binding.
	NonceLen = 16

	// TCPHelloLen is the size of the client's rockctl/1 Hello parameters: version, the
	// rock's connection ID and the client nonce.
	TCPHelloLen = 1 + 16 + NonceLen

	// TCPChallengeLen is the size of the server's rockctl/1 Hello parameters: version and
	// the server nonce.
	TCPChallengeLen = 1 + NonceLen

	// TCPProofLen is the size of either end's binding proof on the TCP fallback: version
	// and MAC (the layout of the QUIC server proof).
	TCPProofLen = ServerProofLen

	// FrameHeaderLen is the size of a TCP frame header: type and body length (uint32).
	FrameHeaderLen = 1 + 4

	// FrameTagLen is the size of the authentication tag that ends every TCP frame.
	FrameTagLen = 16

	// TCP frame types.
	FrameDatagram = 0x01 // body: one heartbeat datagram (section 3.3)
	FrameMessage  = 0x02 // body: one control message (section 3.4), unframed
	FrameClose    = 0x03 // body: error code (uint64) and reason; the sender closes

	// MaxFrameDatagramLen is the largest datagram frame body.
	MaxFrameDatagramLen = 64

	// MaxCloseReasonLen is the longest reason phrase in a close frame.
	MaxCloseReasonLen = 255
)

// ErrBadFrame is wrapped by the error of a TCP frame with an unknown type or a wrong
// authentication tag.
var ErrBadFrame = errors.New("unknown frame type or wrong tag")

// AppendTCPHello appends the client's rockctl/1 Hello parameters to b.
func AppendTCPHello(b []byte, id ID, nc [NonceLen]byte) []byte {
	b = append(b, Version)
	b = append(b, id[:]...)
	return append(b, nc[:]...)
}

// ParseTCPHello parses the client's rockctl/1 Hello parameters, which must be exactly
// TCPHelloLen bytes.
func ParseTCPHello(b []byte) (id ID, nc [NonceLen]byte, err error) {
	if err := checkExact(b, "tcp hello", Version, TCPHelloLen); err != nil {
		return id, nc, err
	}
	copy(id[:], b[1:17])
	copy(nc[:], b[17:TCPHelloLen])
	return id, nc, nil
}

// AppendTCPChallenge appends the server's rockctl/1 Hello parameters to b.
func AppendTCPChallenge(b []byte, ns [NonceLen]byte) []byte {
	b = append(b, Version)
	return append(b, ns[:]...)
}

// ParseTCPChallenge parses the server's rockctl/1 Hello parameters, which must be exactly
// TCPChallengeLen bytes.
func ParseTCPChallenge(b []byte) (ns [NonceLen]byte, err error) {
	if err := checkExact(b, "tcp challenge", Version, TCPChallengeLen); err != nil {
		return ns, err
	}
	copy(ns[:], b[1:TCPChallengeLen])
	return ns, nil
}

// checkExact is checkFixed for a message that must fill b exactly.
func checkExact(b []byte, msg string, first byte, size int) error {
	if err := checkFixed(b, msg, first, size); err != nil {
		return err
	}
	if len(b) > size {
		return parseError(msg, ErrTooLong)
	}
	return nil
}

// AppendFrameHeader appends a TCP frame header for a body of n bytes of type typ to b.
func AppendFrameHeader(b []byte, typ byte, n int) []byte {
	b = append(b, typ)
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

// ParseFrameHeader parses a TCP frame header at the start of b and checks the body length
// against the limit of its type, so that a reader can allocate the body (plus the
// FrameTagLen-byte tag) safely.
func ParseFrameHeader(b []byte) (typ byte, length int, err error) {
	if len(b) < FrameHeaderLen {
		return 0, 0, parseError("tcp frame", ErrShort)
	}
	typ = b[0]
	l := binary.BigEndian.Uint32(b[1:FrameHeaderLen])
	var limit uint32
	switch typ {
	case FrameDatagram:
		limit = MaxFrameDatagramLen
	case FrameMessage:
		limit = MaxMessageLen
	case FrameClose:
		limit = 8 + MaxCloseReasonLen
	default:
		return 0, 0, parseError("tcp frame", ErrBadFrame)
	}
	if l > limit {
		return 0, 0, parseError("tcp frame", ErrTooLong)
	}
	return typ, int(l), nil
}

// AppendCloseBody appends the body of a close frame to b; the reason is cut to
// MaxCloseReasonLen bytes.
func AppendCloseBody(b []byte, code uint64, reason string) []byte {
	b = binary.BigEndian.AppendUint64(b, code)
	if len(reason) > MaxCloseReasonLen {
		reason = reason[:MaxCloseReasonLen]
	}
	return append(b, reason...)
}

// ParseCloseBody parses the body of a close frame (all of b).
func ParseCloseBody(b []byte) (code uint64, reason string, err error) {
	if len(b) < 8 {
		return 0, "", parseError("tcp close", ErrShort)
	}
	if len(b) > 8+MaxCloseReasonLen {
		return 0, "", parseError("tcp close", ErrTooLong)
	}
	return binary.BigEndian.Uint64(b), string(b[8:]), nil
}
