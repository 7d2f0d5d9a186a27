package tcprocks

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// Errors a rock's calls can return. Test them with errors.Is.
var (
	// ErrReconnectTimeout: the rock stayed suspended for longer than the policy's reconnect
	// timeout and closed. Errors that wrap it are net.Errors with Timeout() == true.
	ErrReconnectTimeout = errors.New("tcprocks: reconnect timeout expired")
	// ErrPeerLost: the peer's listener answered every resume attempt with a definite "unknown
	// connection" refusal for longer than the policy's refusal grace (its process restarted and
	// lost the rock), and no other address was left to try.
	ErrPeerLost = errors.New("tcprocks: peer lost the connection")
	// ErrPeerClosed: a write after the peer has closed its rock (Close, not CloseWrite); the
	// peer will never read it. It wraps syscall.EPIPE, as a write to a closed TCP peer does.
	ErrPeerClosed = fmt.Errorf("tcprocks: peer closed the connection: %w", syscall.EPIPE)
	// ErrNotEnhanced: Config.RequireEnhanced is set and the server does not speak rocks/1.
	ErrNotEnhanced = errors.New("tcprocks: peer does not support rocks")
	// ErrAuth: a peer failed the rock's authentication (wrong key, replayed exchange, or the
	// Authenticator refused).
	ErrAuth = errors.New("tcprocks: authentication failed")

	errRefused       = errors.New("tcprocks: peer refused the resumption (connection unknown there)")
	errHeartbeat     = errors.New("tcprocks: heartbeats missed")
	errCtlClosed     = errors.New("tcprocks: control channel closed by the peer")
	errRequested     = errors.New("tcprocks: suspended by the application")
	errPeerReconnect = errors.New("tcprocks: peer reconnected")
	errLingerNoCtl   = errors.New("tcprocks: closing without a control channel")
	errDataBroken    = errors.New("tcprocks: data connection closed or reset by the network")
	errDataStalled   = errors.New("tcprocks: data path stalled")
	errDataEOF       = errors.New("tcprocks: data connection ended without a close message")
	errProtocol      = errors.New("tcprocks: protocol violation")
)

// Error is a terminal error of a rock: the rock has closed because of Kind (ErrReconnectTimeout,
// ErrPeerLost, ...). It is a net.Error; errors.Is matches Kind and net.ErrClosed.
type Error struct {
	Kind   error
	Detail string
}

// Error returns the message: the kind and the detail.
func (e *Error) Error() string {
	if e.Detail == "" {
		return e.Kind.Error()
	}
	return e.Kind.Error() + ": " + e.Detail
}

// Unwrap returns Kind and net.ErrClosed.
func (e *Error) Unwrap() []error { return []error{e.Kind, net.ErrClosed} }

// Timeout reports whether the rock closed because its reconnect timeout expired.
func (e *Error) Timeout() bool { return errors.Is(e.Kind, ErrReconnectTimeout) }

// Temporary is false: the rock is closed for good.
func (e *Error) Temporary() bool { return false }

var _ net.Error = (*Error)(nil)

func timeoutError(d time.Duration) error {
	return &Error{Kind: ErrReconnectTimeout, Detail: "peer unreachable for " + d.String()}
}

func (c *Conn) opError(op string, err error) error {
	if err == io.EOF {
		return err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

var errDeadline = os.ErrDeadlineExceeded

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
