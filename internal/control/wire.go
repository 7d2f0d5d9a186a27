package control

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire format of the control channel (specified in docs/protocol.md, section 3).
// All integers are big-endian. The protocol version is carried by the ALPN
// ("rockudp-ctl/1") and repeated in the first byte of every message, so a
// parser can reject anything it does not understand.
const (
	// ALPN is the TLS application protocol of a control session (version 2: channels
	// multiplexed on one connection).
	ALPN = "rockudp-ctl/2"

	// Version is the version byte of the binding proofs.
	Version = 1

	// TypeHeartbeat is the version/type byte of a version-1 heartbeat datagram.
	TypeHeartbeat = 0x01

	// HeartbeatLen is the size of a heartbeat datagram: type byte + consumed (uint64).
	HeartbeatLen = 1 + 8

	// MACLen is the size of a binding proof MAC (HMAC-SHA256).
	MACLen = 32

	// ServerProofLen is the size of the server's binding proof: version + MAC.
	ServerProofLen = 1 + MACLen

	// MessageHeaderLen is the size of a control message's length prefix (uint32).
	MessageHeaderLen = 4

	// MaxMessageLen is the largest control message (Send, OnMessage): 64 KiB.
	MaxMessageLen = 64 << 10
)

// Binding labels and the TLS exporter label (RFC 5705 / RFC 8446 §7.5).
const (
	exporterLabel = "EXPORTER-rockudp-control"
	labelClient   = "rockudp control client proof"
	labelServer   = "rockudp control server proof"
	exporterLen   = 32
)

// Parse errors. Parsers wrap them with the message name
// ("control: heartbeat: message too short"); match with errors.Is.
var (
	// ErrShort means b holds fewer bytes than the message needs.
	ErrShort = errors.New("message too short")
	// ErrVersion means the version/type byte is not one this package speaks.
	ErrVersion = errors.New("unknown version or type")
	// ErrTooLong means a length field exceeds its documented limit.
	ErrTooLong = errors.New("message too long")
)

func parseError(msg string, err error) error {
	return fmt.Errorf("control: %s: %w", msg, err)
}

// checkFixed checks that b starts with a size-byte message msg whose first
// byte is first.
func checkFixed(b []byte, msg string, first byte, size int) error {
	switch {
	case len(b) < 1:
		return parseError(msg, ErrShort)
	case b[0] != first:
		return parseError(msg, ErrVersion)
	case len(b) < size:
		return parseError(msg, ErrShort)
	}
	return nil
}

// AppendHeartbeat appends a heartbeat datagram carrying consumed (the total
// number of bytes the sender's application has consumed) to b.
func AppendHeartbeat(b []byte, consumed uint64) []byte {
	b = append(b, TypeHeartbeat)
	return binary.BigEndian.AppendUint64(b, consumed)
}

// ParseHeartbeat parses a heartbeat at the start of b and returns the
// sender's consumed count and the number of bytes used (HeartbeatLen).
// A datagram must hold exactly one heartbeat; the caller checks n == len(b).
func ParseHeartbeat(b []byte) (consumed uint64, n int, err error) {
	if err := checkFixed(b, "heartbeat", TypeHeartbeat, HeartbeatLen); err != nil {
		return 0, 0, err
	}
	return binary.BigEndian.Uint64(b[1:HeartbeatLen]), HeartbeatLen, nil
}

// AppendServerProof appends the server's reply, HMAC-SHA256(key, label_server
// || exporter), to b (ServerProofLen bytes).
func AppendServerProof(b []byte, mac [MACLen]byte) []byte {
	b = append(b, Version)
	return append(b, mac[:]...)
}

// ParseServerProof parses a server proof at the start of b.
func ParseServerProof(b []byte) (mac [MACLen]byte, n int, err error) {
	if err := checkFixed(b, "server proof", Version, ServerProofLen); err != nil {
		return mac, 0, err
	}
	copy(mac[:], b[1:ServerProofLen])
	return mac, ServerProofLen, nil
}

// AppendMessage appends a framed control message (uint32 length, then m) to b.
// It fails with ErrTooLong if len(m) > MaxMessageLen.
func AppendMessage(b, m []byte) ([]byte, error) {
	if len(m) > MaxMessageLen {
		return b, parseError("message", ErrTooLong)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(m)))
	return append(b, m...), nil
}

// ParseMessageHeader parses the length prefix at the start of b and checks it
// against MaxMessageLen, so a reader can allocate the body safely.
func ParseMessageHeader(b []byte) (length int, err error) {
	if len(b) < MessageHeaderLen {
		return 0, parseError("message", ErrShort)
	}
	l := binary.BigEndian.Uint32(b)
	if l > MaxMessageLen {
		return 0, parseError("message", ErrTooLong)
	}
	return int(l), nil
}

// ParseMessage parses a framed control message at the start of b. m aliases b.
func ParseMessage(b []byte) (m []byte, n int, err error) {
	l, err := ParseMessageHeader(b)
	if err != nil {
		return nil, 0, err
	}
	n = MessageHeaderLen + l
	if len(b) < n {
		return nil, 0, parseError("message", ErrShort)
	}
	return b[MessageHeaderLen:n:n], n, nil
}
