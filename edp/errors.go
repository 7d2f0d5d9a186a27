package edp

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

var (
	// ErrStaleAnnouncement is matched (errors.Is) by the error of a Dial whose
	// announcement the server no longer recognises (it restarted with a new one).
	// Dial re-probes once by itself unless the announcement came from Config.
	ErrStaleAnnouncement = errors.New("edp: stale announcement, re-probe")
	// ErrMalformed is matched by errors about a message that breaks the wire format.
	ErrMalformed = errors.New("edp: malformed message")
)

// VersionError reports a message whose version byte this package does not speak.
type VersionError struct {
	Version uint8 // the version byte received
}

// Error describes the version mismatch.
func (e *VersionError) Error() string {
	return fmt.Sprintf("edp: unsupported protocol version %d (this end speaks %d)", e.Version, ProtocolVersion)
}

// RejectError is the server's reject message: it refused the enhanced handshake.
type RejectError struct {
	Code ErrorCode
	Text string // the server's explanation, at most MaxErrorText bytes
}

// Error describes the reject.
func (e *RejectError) Error() string {
	return fmt.Sprintf("edp: server rejected the handshake: %s: %q", e.Code, e.Text)
}

// Is makes a reject with CodeStale match ErrStaleAnnouncement and one with
// CodeMalformed match ErrMalformed.
func (e *RejectError) Is(target error) bool {
	return e.Code == CodeStale && target == ErrStaleAnnouncement ||
		e.Code == CodeMalformed && target == ErrMalformed
}

// HandshakeError reports a failed enhanced handshake with an enhanced server: a
// reject, a malformed reply, a failed Hello or Init hook, a timeout. It is a net.Error;
// Timeout is true when the handshake ran out of time (errors.Is(err,
// os.ErrDeadlineExceeded) then holds too).
type HandshakeError struct {
	Addr string // the server address given to Dial
	Err  error  // the cause
}

// Error describes the failure.
func (e *HandshakeError) Error() string {
	return "edp: handshake with " + e.Addr + ": " + strings.TrimPrefix(e.Err.Error(), "edp: ")
}

// Unwrap returns the cause.
func (e *HandshakeError) Unwrap() error { return e.Err }

// Timeout reports whether the handshake ran out of time.
func (e *HandshakeError) Timeout() bool {
	var ne net.Error
	return errors.As(e.Err, &ne) && ne.Timeout()
}

// Temporary is false; it exists to satisfy net.Error.
func (e *HandshakeError) Temporary() bool { return false }

var _ net.Error = (*HandshakeError)(nil)
