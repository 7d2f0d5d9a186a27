package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/quic-go/quic-go"
)

// QUIC application error codes sent in CONNECTION_CLOSE (docs/protocol.md §3).
const (
	codeClosed     quic.ApplicationErrorCode = 0x0 // Channel.Close, Server.Close, Client.Close
	codeRefused    quic.ApplicationErrorCode = 0x1 // client proof malformed, unknown ID or wrong MAC
	codeTimeout    quic.ApplicationErrorCode = 0x2 // no client proof within the handshake timeout
	codeBusy       quic.ApplicationErrorCode = 0x3 // too many pending handshakes / not accepted in time
	codeBadProof   quic.ApplicationErrorCode = 0x4 // server proof malformed or wrong (client side)
	codeDead       quic.ApplicationErrorCode = 0x5 // no heartbeat for Misses intervals
	codeProtocol   quic.ApplicationErrorCode = 0x6 // malformed datagram or control frame
	codeSendFailed quic.ApplicationErrorCode = 0x7 // a control message was cut mid-frame (Send aborted)
)

var (
	// ErrRefused is returned by Dial when the server refused the client's
	// binding proof: the ID is unknown to it, the key is wrong, or it is busy.
	ErrRefused = errors.New("control: channel refused by server")

	// ErrBadProof is returned by Dial when the server's binding proof is wrong:
	// the server does not hold the key, or a man in the middle relays the session.
	ErrBadProof = errors.New("control: server failed the channel binding")

	// ErrPeerClosed is wrapped by the error given to OnDead (and returned by
	// Send) when the peer closed the channel.
	ErrPeerClosed = errors.New("control: channel closed by peer")

	// ErrClosed is returned by operations on a closed Channel, Server or Client.
	// It wraps net.ErrClosed.
	ErrClosed = fmt.Errorf("control: %w", net.ErrClosed)

	// ErrMessageTooLong is returned by Send for a message over MaxMessageLen.
	ErrMessageTooLong = fmt.Errorf("control: control message longer than %d bytes", MaxMessageLen)
)

// HeartbeatTimeoutError is given to OnDead when no heartbeat arrived from the
// peer for Misses intervals. It is a net.Error with Timeout() true and wraps
// os.ErrDeadlineExceeded and net.ErrClosed (the channel is closed afterwards).
type HeartbeatTimeoutError struct {
	Silence  time.Duration // time since the last heartbeat (or since Start)
	Interval time.Duration // policy in force when the peer was declared dead
	Misses   int
}

func (e *HeartbeatTimeoutError) Error() string {
	return fmt.Sprintf("control: no heartbeat from peer for %v (%d intervals of %v)",
		e.Silence.Round(time.Millisecond), e.Misses, e.Interval)
}

// Timeout reports true: the peer timed out.
func (e *HeartbeatTimeoutError) Timeout() bool { return true }

// Temporary reports true (the peer may come back on a new channel).
func (e *HeartbeatTimeoutError) Temporary() bool { return true }

// Unwrap returns os.ErrDeadlineExceeded and net.ErrClosed.
func (e *HeartbeatTimeoutError) Unwrap() []error {
	return []error{os.ErrDeadlineExceeded, net.ErrClosed}
}

// timeoutError is the net.Error returned when a context deadline or the
// handshake timeout ends an operation.
type timeoutError struct {
	op    string
	cause error
}

func (e *timeoutError) Error() string   { return "control: " + e.op + ": i/o timeout" }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }
func (e *timeoutError) Unwrap() []error { return []error{os.ErrDeadlineExceeded, e.cause} }

var _ net.Error = (*timeoutError)(nil)
var _ net.Error = (*HeartbeatTimeoutError)(nil)

// ctxError turns the end of ctx into this package's error for op: a timeout
// net.Error for a deadline, otherwise the context's error.
func ctxError(op string, ctx context.Context) error {
	err := context.Cause(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return &timeoutError{op: op, cause: err}
	}
	return fmt.Errorf("control: %s: %w", op, err)
}

// connError describes why a QUIC connection ended, as seen by this package.
func connError(err error) error {
	var appErr *quic.ApplicationError
	if errors.As(err, &appErr) && appErr.Remote {
		switch appErr.ErrorCode {
		case codeClosed:
			return fmt.Errorf("%w: %w", ErrPeerClosed, err)
		case codeRefused, codeBusy, codeTimeout:
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
		return fmt.Errorf("control: peer closed the channel: %w", err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return &timeoutError{op: "read", cause: err}
	}
	return fmt.Errorf("control: connection lost: %w", err)
}
