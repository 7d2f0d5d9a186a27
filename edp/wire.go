package edp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Limits of the wire format (see docs/protocol.md, section 1). Every length is checked
// against them before anything is allocated.
const (
	// AnnouncementLen is the length of a server's announcement: the 8-byte magic
	// prefix followed by 1016 random bytes.
	AnnouncementLen = 1024
	// ProtocolVersion is the version byte of every EDP message this package sends
	// and the only one it accepts.
	ProtocolVersion = 1
	// MaxNameLen is the longest enhancement name; names are 1..MaxNameLen bytes of
	// [a-z0-9.-].
	MaxNameLen = 32
	// MaxParamsLen is the largest Hello parameter block of one enhancement.
	MaxParamsLen = 4096
	// MaxOffers is the largest number of enhancements in one offer, agreement or
	// probe list.
	MaxOffers = 8
	// MaxErrorText is the longest text of an error message.
	MaxErrorText = 255
)

// magic starts every announcement. Its first byte is not ASCII and not a TLS record
// type, so the first byte of an ordinary client (HTTP, TLS, SSH, SMTP...) mismatches it
// at once and the connection is handed over with no added delay. The CR LF ^Z LF tail
// (as in PNG) catches byte-mangling middleboxes.
var magic = [8]byte{0xED, 'E', 'D', 'P', 0x0D, 0x0A, 0x1A, 0x0A}

// msgHeaderLen is the length of a message header: version, type, 16-bit body length.
const msgHeaderLen = 4

// msgType is the second byte of a message header.
type msgType uint8

const (
	msgOffer  msgType = 1 // client → server: the enhancements offered, with Hello params
	msgAgree  msgType = 2 // server → client: the agreed enhancements, with Hello params
	msgReject msgType = 3 // server → client: an error code and text, then close
	msgList   msgType = 4 // server → client after a probe's announcement: what it supports
)

// ErrorCode is the code of a server's reject message.
type ErrorCode uint8

// Reject codes.
const (
	// CodeStale: the announcement had the magic prefix but is not this server's
	// (the server restarted with a new announcement); the client should re-probe.
	CodeStale ErrorCode = 1
	// CodeMalformed: the offer could not be parsed.
	CodeMalformed ErrorCode = 2
	// CodeVersion: the offer's version byte is not supported.
	CodeVersion ErrorCode = 3
)

// String describes the code.
func (c ErrorCode) String() string {
	switch c {
	case CodeStale:
		return "stale announcement"
	case CodeMalformed:
		return "malformed offer"
	case CodeVersion:
		return "unsupported version"
	}
	return "code " + strconv.Itoa(int(c))
}

// ID names one version of an enhancement, such as rocks/1.
type ID struct {
	Name    string
	Version uint8
}

// String returns "name/version", e.g. "rocks/1".
func (id ID) String() string { return id.Name + "/" + strconv.Itoa(int(id.Version)) }

// ParseID parses "name/version" as printed by [ID.String].
func ParseID(s string) (ID, error) {
	name, ver, ok := strings.Cut(s, "/")
	if !ok {
		return ID{}, fmt.Errorf("edp: enhancement %q: want name/version", s)
	}
	v, err := strconv.ParseUint(ver, 10, 8)
	if err != nil {
		return ID{}, fmt.Errorf("edp: enhancement %q: bad version", s)
	}
	id := ID{Name: name, Version: uint8(v)}
	if err := id.validate(); err != nil {
		return ID{}, fmt.Errorf("edp: %w", err)
	}
	return id, nil
}

func (id ID) validate() error {
	if !validName(id.Name) {
		return fmt.Errorf("enhancement name %q: want 1..%d bytes of [a-z0-9.-]", id.Name, MaxNameLen)
	}
	return nil
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// entry is one enhancement in an offer, agreement or list (params empty in a list).
type entry struct {
	ID
	Params []byte
}

// message is one EDP message after the announcement.
type message struct {
	Type    msgType
	Entries []entry   // offer, agree, list
	Code    ErrorCode // reject
	Text    string    // reject
}

var errShort = errors.New("edp: message truncated")

// appendMessage appends the encoding of m to b. It fails if m breaks a limit.
func appendMessage(b []byte, m message) ([]byte, error) {
	start := len(b)
	b = append(b, ProtocolVersion, byte(m.Type), 0, 0)
	switch m.Type {
	case msgOffer, msgAgree, msgList:
		if len(m.Entries) > MaxOffers {
			return b[:start], fmt.Errorf("edp: %d enhancements, limit %d", len(m.Entries), MaxOffers)
		}
		b = append(b, byte(len(m.Entries)))
		for _, e := range m.Entries {
			if err := e.validate(); err != nil {
				return b[:start], fmt.Errorf("edp: %w", err)
			}
			if len(e.Params) > MaxParamsLen || m.Type == msgList && len(e.Params) > 0 {
				return b[:start], fmt.Errorf("edp: %s: %d bytes of params, limit %d", e.ID, len(e.Params), MaxParamsLen)
			}
			b = append(b, byte(len(e.Name)))
			b = append(b, e.Name...)
			b = append(b, e.Version)
			b = binary.BigEndian.AppendUint16(b, uint16(len(e.Params)))
			b = append(b, e.Params...)
		}
	case msgReject:
		text := m.Text
		if len(text) > MaxErrorText {
			text = text[:MaxErrorText]
		}
		b = append(b, byte(m.Code), byte(len(text)))
		b = append(b, text...)
	default:
		return b[:start], fmt.Errorf("edp: unknown message type %d", m.Type)
	}
	body := len(b) - start - msgHeaderLen
	if body > maxBodyLen(m.Type) {
		return b[:start], fmt.Errorf("edp: message body of %d bytes, limit %d", body, maxBodyLen(m.Type))
	}
	binary.BigEndian.PutUint16(b[start+2:], uint16(body))
	return b, nil
}

// maxBodyLen is the largest body of a message of type t (0: unknown type).
func maxBodyLen(t msgType) int {
	switch t {
	case msgOffer, msgAgree:
		return 1 + MaxOffers*(1+MaxNameLen+1+2+MaxParamsLen)
	case msgList:
		return 1 + MaxOffers*(1+MaxNameLen+1+2)
	case msgReject:
		return 2 + MaxErrorText
	}
	return 0
}

// parseHeader checks a message header and returns the message type and body length.
func parseHeader(b []byte) (msgType, int, error) {
	if len(b) < msgHeaderLen {
		return 0, 0, errShort
	}
	if b[0] != ProtocolVersion {
		return 0, 0, &VersionError{Version: b[0]}
	}
	t := msgType(b[1])
	n := int(binary.BigEndian.Uint16(b[2:]))
	limit := maxBodyLen(t)
	if limit == 0 {
		return 0, 0, fmt.Errorf("%w: unknown message type %d", ErrMalformed, t)
	}
	if n > limit {
		return 0, 0, fmt.Errorf("%w: body of %d bytes, limit %d", ErrMalformed, n, limit)
	}
	return t, n, nil
}

// parseMessage parses one message from the start of b and returns it with the number
// of bytes it used. A truncated message gives errShort; params are copied out of b.
func parseMessage(b []byte) (message, int, error) {
	t, n, err := parseHeader(b)
	if err != nil {
		return message{}, 0, err
	}
	if len(b) < msgHeaderLen+n {
		return message{}, 0, errShort
	}
	body := b[msgHeaderLen : msgHeaderLen+n]
	m := message{Type: t}
	switch t {
	case msgReject:
		if len(body) < 2 || len(body) != 2+int(body[1]) {
			return message{}, 0, fmt.Errorf("%w: bad reject body", ErrMalformed)
		}
		m.Code, m.Text = ErrorCode(body[0]), string(body[2:])
	default:
		m.Entries, err = parseEntries(body, t == msgList)
		if err != nil {
			return message{}, 0, err
		}
	}
	return m, msgHeaderLen + n, nil
}

func parseEntries(body []byte, list bool) ([]entry, error) {
	if len(body) < 1 {
		return nil, fmt.Errorf("%w: missing count", ErrMalformed)
	}
	count := int(body[0])
	if count > MaxOffers {
		return nil, fmt.Errorf("%w: %d enhancements, limit %d", ErrMalformed, count, MaxOffers)
	}
	body = body[1:]
	entries := make([]entry, 0, count)
	for i := 0; i < count; i++ {
		if len(body) < 1 {
			return nil, fmt.Errorf("%w: entry %d truncated", ErrMalformed, i)
		}
		nl := int(body[0])
		if nl < 1 || nl > MaxNameLen || len(body) < 1+nl+3 {
			return nil, fmt.Errorf("%w: entry %d: bad name length %d", ErrMalformed, i, nl)
		}
		name := string(body[1 : 1+nl])
		if !validName(name) {
			return nil, fmt.Errorf("%w: entry %d: bad name %q", ErrMalformed, i, name)
		}
		id := ID{Name: name, Version: body[1+nl]}
		pl := int(binary.BigEndian.Uint16(body[2+nl:]))
		if pl > MaxParamsLen || list && pl > 0 {
			return nil, fmt.Errorf("%w: %s: %d bytes of params", ErrMalformed, id, pl)
		}
		body = body[4+nl:]
		if len(body) < pl {
			return nil, fmt.Errorf("%w: %s: params truncated", ErrMalformed, id)
		}
		for _, e := range entries {
			if e.ID == id {
				return nil, fmt.Errorf("%w: %s listed twice", ErrMalformed, id)
			}
		}
		var params []byte
		if pl > 0 {
			params = append([]byte(nil), body[:pl]...)
		}
		entries = append(entries, entry{ID: id, Params: params})
		body = body[pl:]
	}
	if len(body) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(body))
	}
	return entries, nil
}

// hasMagicPrefix reports whether b is consistent with the start of an announcement:
// its first min(len(b), 8) bytes equal the magic.
func hasMagicPrefix(b []byte) bool {
	n := min(len(b), len(magic))
	return string(b[:n]) == string(magic[:n])
}
