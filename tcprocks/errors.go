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
	// ErrPSKMismatch: the peer does not hold the same pre-shared key (Config.PSK), or one end
	// has a key and the other none. Dial fails with it, and the listener logs it; no rock is
	// made. It wraps ErrAuth.
	ErrPSKMismatch = fmt.Errorf("%w: the peer does not hold the same pre-shared key (check Config.PSK on both ends)", ErrAuth)
	// ErrLimit: the listener refused a new rock because one of its limits is reached
	// (Config.MaxRocks, MaxSuspended, MaxInFlightMemory, MaxPendingHandshakes); the error
	// names it. Try again later.
	ErrLimit = errors.New("tcprocks: the server refused the connection: limit reached, try again later")
	// ErrExported: the rock was handed off with Conn.Export; this Conn is no longer usable.
	ErrExported = errors.New("tcprocks: connection exported")
	// ErrAddressRemoved: the Suspended event's cause when the local address of the data
	// connection disappeared from the machine (see Config.IgnoreNetworkChanges).
	ErrAddressRemoved = errors.New("tcprocks: local address removed")

	errRefused       = errors.New("tcprocks: peer refused the resumption (connection unknown there)")
	errBusy          = errors.New("tcprocks: peer refused the resumption for now (limit reached)")
	errNoAnswer      = errors.New("tcprocks: no answer")
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

// isTimeout reports whether err is a net.Error timeout. It is on the write path of every
// Write: nil must not allocate.
func isTimeout(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
