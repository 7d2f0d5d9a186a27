package tcprocks

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire messages of rocks/1 (docs/protocol.md section 2). All are fixed-size; integers are
// big-endian. Each Parse function checks the type byte and the exact length before it looks at
// anything else and returns the number of bytes it used.

// Message types (first byte).
const (
	msgInit      = 0x01 // client Hello: start a new rock
	msgResume    = 0x02 // client Hello: resume a suspended rock
	msgInitOK    = 0x11 // server Hello: answer to msgInit
	msgChallenge = 0x12 // server Hello: answer to msgResume (server proof + nonce)
	msgRefuse    = 0x13 // server Hello: answer to msgResume for an unknown ID
	msgProof     = 0x21 // client, first bytes on the data connection after a resume Hello
	msgAccept    = 0x22 // server, first bytes after a verified msgProof
	msgConfirm   = 0x23 // client, first bytes after INIT-OK when both ends have a PSK
	msgFin       = 0x31 // control channel: "my writing side ends at count N"
	msgFinAck    = 0x32 // control channel: "I have your FIN(full); I consumed N bytes"
)

// Sizes.
const (
	idLen    = 16
	keyLen   = 32 // X25519 public key
	nonceLen = 16
	macLen   = 32 // HMAC-SHA256

	initLen      = 1 + 1 + keyLen + 4 + 4 + 1 // without the name
	resumeLen    = 1 + idLen + nonceLen + 8 + 1 + 8
	initOKLen    = 1 + keyLen + idLen + 4 + 4 + 1 + macLen + 1 // without the name
	confirmLen   = 1 + macLen
	challengeLen = 1 + nonceLen + macLen
	refuseLen    = 1 + 1
	proofLen     = 1 + macLen
	acceptLen    = 1 + 8 + 1 + 8
	finLen       = 1 + 1 + 8
	finAckLen    = 1 + 8

	// finAckBit in the fin byte of msgResume and msgAccept: the sender has the other side's
	// FIN(full) and needs nothing more from it (it consumed every byte or closed itself).
	finAckBit = 0x80
)

// MaxNameLen is the longest locator name (Config.Name): a DNS name of at most 253 bytes.
const MaxNameLen = 253

// flagPSK in the flags byte of INIT and INIT-OK: the sender has a pre-shared key.
const flagPSK = 0x01

// Refusal reasons (msgRefuse). Only refuseUnknown means "not here"; the others are limits of
// a listener that has the rock (or would take it): try again later.
const (
	refuseUnknown   = 1 // RESUME: no rock with this ID here
	refuseBusy      = 2 // too many handshakes pending (Config.MaxPendingHandshakes)
	refuseFull      = 3 // INIT: the listener has MaxRocks rocks, or is closing
	refuseSuspended = 4 // INIT: too many suspended rocks (Config.MaxSuspended)
	refuseMemory    = 5 // INIT: the in-flight memory limit is reached (Config.MaxInFlightMemory)
	refuseRate      = 6 // RESUME: too many attempts for this ID (Config.MaxResumeRate)
)

// refuseText explains a refusal reason.
func refuseText(reason uint8) string {
	switch reason {
	case refuseUnknown:
		return "connection unknown there"
	case refuseBusy:
		return "too many pending handshakes"
	case refuseFull:
		return "listener full or closing"
	case refuseSuspended:
		return "too many suspended connections"
	case refuseMemory:
		return "in-flight memory limit reached"
	case refuseRate:
		return "too many resume attempts for this connection"
	}
	return fmt.Sprintf("reason %d", reason)
}

// finState says how far a side has closed its rock.
type finState uint8

const (
	finNone  finState = 0 // open
	finWrite finState = 1 // CloseWrite: no more bytes from this side, still reading
	finFull  finState = 2 // Close: no more bytes and no more reading
)

var errMessage = errors.New("tcprocks: malformed message")

// limits are a side's kernel socket buffer maxima in bytes.
type limits struct {
	Recv, Send uint32
}

type initMsg struct {
	Flags  uint8 // flagPSK; other bits reserved, 0
	Public [keyLen]byte
	Limits limits
	Name   string // the client's locator name; "" = none
}

type resumeMsg struct {
	ID       [idLen]byte
	Nonce    [nonceLen]byte
	Received uint64 // bytes the client's application has consumed
	Fin      finState
	FinAt    uint64 // when Fin != finNone: the client's total bytes written
	AckFin   bool   // finAckBit
}

type initOKMsg struct {
	Public  [keyLen]byte
	ID      [idLen]byte
	Limits  limits
	Flags   uint8        // flagPSK; other bits reserved, 0
	Confirm [macLen]byte // serverConfirm: proves the server derived the same keys
	Name    string       // the server's locator name; "" = none
}

type challengeMsg struct {
	Nonce [nonceLen]byte
	Proof [macLen]byte
}

type acceptMsg struct {
	Received uint64
	Fin      finState
	FinAt    uint64
	AckFin   bool // finAckBit
}

type finMsg struct {
	Fin   finState
	Count uint64
}

func checkHeader(b []byte, typ byte, n int) error {
	if len(b) < n {
		return fmt.Errorf("%w: %d bytes, want %d", errMessage, len(b), n)
	}
	if b[0] != typ {
		return fmt.Errorf("%w: type %#x, want %#x", errMessage, b[0], typ)
	}
	return nil
}

func parseFin(b byte) (finState, error) {
	if b > byte(finFull) {
		return 0, fmt.Errorf("%w: fin state %d", errMessage, b)
	}
	return finState(b), nil
}

// appendName appends name_len (1 byte) and the name; the name must be valid (checkName).
func appendName(b []byte, name string) []byte {
	b = append(b, byte(len(name)))
	return append(b, name...)
}

// parseName parses the name at the end of a message whose fixed part is fixed bytes long (the
// last of them the name's length). It returns the name and the message's total length.
func parseName(b []byte, fixed int) (string, int, error) {
	nl := int(b[fixed-1])
	if nl > MaxNameLen || len(b) < fixed+nl {
		return "", 0, fmt.Errorf("%w: name of %d bytes in %d", errMessage, nl, len(b)-fixed)
	}
	name := string(b[fixed : fixed+nl])
	if err := checkName(name); err != nil {
		return "", 0, fmt.Errorf("%w: %w", errMessage, err)
	}
	return name, fixed + nl, nil
}

// checkName checks that name is "" or a DNS name: at most MaxNameLen bytes, dot-separated
// labels of 1 to 63 letters, digits, '-' or '_', no label beginning or ending with '-', no
// trailing dot.
func checkName(name string) error {
	if name == "" {
		return nil
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("tcprocks: name of %d bytes (at most %d)", len(name), MaxNameLen)
	}
	if len(name) > 1 && name[len(name)-1] == '.' {
		name = name[:len(name)-1] // fully qualified: "server.example.org."
	}
	label := 0
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '.' {
			if label == 0 || label > 63 {
				return fmt.Errorf("tcprocks: name %q: labels must have 1 to 63 bytes", name)
			}
			if name[i-1] == '-' || name[i-label] == '-' {
				return fmt.Errorf("tcprocks: name %q: a label begins or ends with '-'", name)
			}
			label = 0
			continue
		}
		ch := name[i]
		if !('a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' || '0' <= ch && ch <= '9' || ch == '-' || ch == '_') {
			return fmt.Errorf("tcprocks: name %q: byte %q is not a letter, digit, '-' or '_'", name, ch)
		}
		label++
	}
	return nil
}

func appendInit(b []byte, m initMsg) []byte {
	b = append(b, msgInit, m.Flags)
	b = append(b, m.Public[:]...)
	b = binary.BigEndian.AppendUint32(b, m.Limits.Recv)
	b = binary.BigEndian.AppendUint32(b, m.Limits.Send)
	return appendName(b, m.Name)
}

func parseInit(b []byte) (m initMsg, n int, err error) {
	if err := checkHeader(b, msgInit, initLen); err != nil {
		return m, 0, err
	}
	m.Flags = b[1]
	copy(m.Public[:], b[2:])
	m.Limits.Recv = binary.BigEndian.Uint32(b[2+keyLen:])
	m.Limits.Send = binary.BigEndian.Uint32(b[6+keyLen:])
	if m.Name, n, err = parseName(b, initLen); err != nil {
		return m, 0, err
	}
	return m, n, nil
}

func appendResume(b []byte, m resumeMsg) []byte {
	b = append(b, msgResume)
	b = append(b, m.ID[:]...)
	b = append(b, m.Nonce[:]...)
	b = binary.BigEndian.AppendUint64(b, m.Received)
	b = append(b, finByte(m.Fin, m.AckFin))
	return binary.BigEndian.AppendUint64(b, m.FinAt)
}

func finByte(f finState, ack bool) byte {
	if ack {
		return byte(f) | finAckBit
	}
	return byte(f)
}

func parseResume(b []byte) (m resumeMsg, n int, err error) {
	if err := checkHeader(b, msgResume, resumeLen); err != nil {
		return m, 0, err
	}
	p := b[1:]
	p = p[copy(m.ID[:], p):]
	p = p[copy(m.Nonce[:], p):]
	m.Received = binary.BigEndian.Uint64(p)
	m.AckFin = p[8]&finAckBit != 0
	if m.Fin, err = parseFin(p[8] &^ finAckBit); err != nil {
		return m, 0, err
	}
	m.FinAt = binary.BigEndian.Uint64(p[9:])
	return m, resumeLen, nil
}

func appendInitOK(b []byte, m initOKMsg) []byte {
	b = append(b, msgInitOK)
	b = append(b, m.Public[:]...)
	b = append(b, m.ID[:]...)
	b = binary.BigEndian.AppendUint32(b, m.Limits.Recv)
	b = binary.BigEndian.AppendUint32(b, m.Limits.Send)
	b = append(b, m.Flags)
	b = append(b, m.Confirm[:]...)
	return appendName(b, m.Name)
}

func parseInitOK(b []byte) (m initOKMsg, n int, err error) {
	if err := checkHeader(b, msgInitOK, initOKLen); err != nil {
		return m, 0, err
	}
	p := b[1:]
	p = p[copy(m.Public[:], p):]
	p = p[copy(m.ID[:], p):]
	m.Limits.Recv = binary.BigEndian.Uint32(p)
	m.Limits.Send = binary.BigEndian.Uint32(p[4:])
	m.Flags = p[8]
	copy(m.Confirm[:], p[9:])
	if m.Name, n, err = parseName(b, initOKLen); err != nil {
		return m, 0, err
	}
	return m, n, nil
}

func appendChallenge(b []byte, m challengeMsg) []byte {
	b = append(b, msgChallenge)
	b = append(b, m.Nonce[:]...)
	return append(b, m.Proof[:]...)
}

func parseChallenge(b []byte) (m challengeMsg, n int, err error) {
	if err := checkHeader(b, msgChallenge, challengeLen); err != nil {
		return m, 0, err
	}
	copy(m.Nonce[:], b[1:])
	copy(m.Proof[:], b[1+nonceLen:])
	return m, challengeLen, nil
}

func appendRefuse(b []byte, reason uint8) []byte { return append(b, msgRefuse, reason) }

func parseRefuse(b []byte) (reason uint8, n int, err error) {
	if err := checkHeader(b, msgRefuse, refuseLen); err != nil {
		return 0, 0, err
	}
	return b[1], refuseLen, nil
}

func appendProof(b []byte, mac [macLen]byte) []byte {
	b = append(b, msgProof)
	return append(b, mac[:]...)
}

func parseProof(b []byte) (mac [macLen]byte, n int, err error) {
	if err := checkHeader(b, msgProof, proofLen); err != nil {
		return mac, 0, err
	}
	copy(mac[:], b[1:])
	return mac, proofLen, nil
}

func appendConfirm(b []byte, mac [macLen]byte) []byte {
	b = append(b, msgConfirm)
	return append(b, mac[:]...)
}

func parseConfirm(b []byte) (mac [macLen]byte, n int, err error) {
	if err := checkHeader(b, msgConfirm, confirmLen); err != nil {
		return mac, 0, err
	}
	copy(mac[:], b[1:])
	return mac, confirmLen, nil
}

func appendAccept(b []byte, m acceptMsg) []byte {
	b = append(b, msgAccept)
	b = binary.BigEndian.AppendUint64(b, m.Received)
	b = append(b, finByte(m.Fin, m.AckFin))
	return binary.BigEndian.AppendUint64(b, m.FinAt)
}

func parseAccept(b []byte) (m acceptMsg, n int, err error) {
	if err := checkHeader(b, msgAccept, acceptLen); err != nil {
		return m, 0, err
	}
	m.Received = binary.BigEndian.Uint64(b[1:])
	m.AckFin = b[9]&finAckBit != 0
	if m.Fin, err = parseFin(b[9] &^ finAckBit); err != nil {
		return m, 0, err
	}
	m.FinAt = binary.BigEndian.Uint64(b[10:])
	return m, acceptLen, nil
}

func appendFin(b []byte, m finMsg) []byte {
	b = append(b, msgFin, byte(m.Fin))
	return binary.BigEndian.AppendUint64(b, m.Count)
}

func parseFinMsg(b []byte) (m finMsg, n int, err error) {
	if err := checkHeader(b, msgFin, finLen); err != nil {
		return m, 0, err
	}
	if m.Fin, err = parseFin(b[1]); err != nil {
		return m, 0, err
	}
	if m.Fin == finNone {
		return m, 0, fmt.Errorf("%w: FIN without a fin state", errMessage)
	}
	m.Count = binary.BigEndian.Uint64(b[2:])
	return m, finLen, nil
}

func appendFinAck(b []byte, received uint64) []byte {
	b = append(b, msgFinAck)
	return binary.BigEndian.AppendUint64(b, received)
}

func parseFinAck(b []byte) (received uint64, n int, err error) {
	if err := checkHeader(b, msgFinAck, finAckLen); err != nil {
		return 0, 0, err
	}
	return binary.BigEndian.Uint64(b[1:]), finAckLen, nil
}
