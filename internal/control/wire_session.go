package control

import (
	"encoding/binary"
)

// Wire format of a QUIC control session, which carries the control channels of every rock
// between one client process and one listener (docs/protocol.md, sections 3.2–3.4).
const (
	// TypeHeartbeatBatch is the type byte of a heartbeat datagram carrying the heartbeats of
	// several channels of a session.
	TypeHeartbeatBatch = 0x02

	// BatchEntryLen is the size of one entry of a heartbeat batch: channel number (uint32)
	// and consumed (uint64).
	BatchEntryLen = 4 + 8

	// MaxBatchEntries is the most entries a heartbeat batch datagram may hold (it then fits
	// in the 1,200 bytes every QUIC path carries).
	MaxBatchEntries = 90

	// SessionFrameHeaderLen is the size of a session frame header: type, channel number
	// (uint32) and body length (uint32).
	SessionFrameHeaderLen = 1 + 4 + 4

	// Session frame types (on the session's bidirectional stream).
	FrameBind    = 0x01 // client: bind a channel: connection ID (16) and MAC (32)
	FrameBindOK  = 0x02 // server: channel bound: MAC (32)
	FrameRefuse  = 0x03 // server: binding refused: error code (1)
	FrameMsg     = 0x04 // both: one control message of the channel
	FrameChClose = 0x05 // both: the channel ends: error code (uint64) and reason
)

// AppendHeartbeatBatchHeader starts a heartbeat batch datagram in b.
func AppendHeartbeatBatchHeader(b []byte) []byte { return append(b, TypeHeartbeatBatch) }

// AppendBatchEntry appends one channel's heartbeat to a batch.
func AppendBatchEntry(b []byte, channel uint32, consumed uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, channel)
	return binary.BigEndian.AppendUint64(b, consumed)
}

// ParseHeartbeatBatch checks a whole heartbeat batch datagram and calls f for each entry.
// A batch without entries is a keepalive. Nothing is called for a malformed datagram: a
// wrong type byte, more than MaxBatchEntries, or a length that is not a whole number of
// entries.
func ParseHeartbeatBatch(b []byte, f func(channel uint32, consumed uint64)) error {
	switch {
	case len(b) < 1:
		return parseError("heartbeat batch", ErrShort)
	case b[0] != TypeHeartbeatBatch:
		return parseError("heartbeat batch", ErrVersion)
	case len(b) > 1+MaxBatchEntries*BatchEntryLen:
		return parseError("heartbeat batch", ErrTooLong)
	case (len(b)-1)%BatchEntryLen != 0:
		return parseError("heartbeat batch", ErrShort)
	}
	for e := b[1:]; len(e) > 0; e = e[BatchEntryLen:] {
		f(binary.BigEndian.Uint32(e), binary.BigEndian.Uint64(e[4:]))
	}
	return nil
}

// AppendSessionFrameHeader appends a session frame header to b.
func AppendSessionFrameHeader(b []byte, typ byte, channel uint32, n int) []byte {
	b = append(b, typ)
	b = binary.BigEndian.AppendUint32(b, channel)
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

// ParseSessionFrameHeader parses a session frame header at the start of b and checks the
// body length against its type's limit (exact for the fixed-size frames), so that a reader
// can allocate the body safely.
func ParseSessionFrameHeader(b []byte) (typ byte, channel uint32, length int, err error) {
	if len(b) < SessionFrameHeaderLen {
		return 0, 0, 0, parseError("session frame", ErrShort)
	}
	typ = b[0]
	channel = binary.BigEndian.Uint32(b[1:])
	l := binary.BigEndian.Uint32(b[5:])
	var lo, hi uint32
	switch typ {
	case FrameBind:
		lo, hi = 16+MACLen, 16+MACLen
	case FrameBindOK:
		lo, hi = MACLen, MACLen
	case FrameRefuse:
		lo, hi = 1, 1
	case FrameMsg:
		lo, hi = 0, MaxMessageLen
	case FrameChClose:
		lo, hi = 8, 8+MaxCloseReasonLen
	default:
		return 0, 0, 0, parseError("session frame", ErrBadFrame)
	}
	switch {
	case l > hi:
		return 0, 0, 0, parseError("session frame", ErrTooLong)
	case l < lo:
		return 0, 0, 0, parseError("session frame", ErrShort)
	}
	return typ, channel, int(l), nil
}
