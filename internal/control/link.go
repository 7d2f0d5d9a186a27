package control

import (
	"context"
	"net"

	"github.com/quic-go/quic-go"
)

// link is the transport under a Channel: its slot in a QUIC session (vlink), or the TCP
// fallback (tcpLink). It offers what the heartbeat loop and the stream reader need:
// unreliable heartbeat datagrams, one reliable stream of framed control messages, and a
// context that ends, with the reason as its cause, when the transport is gone.
type link interface {
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	// Context ends when the link is closed; its cause says why (a *quic.ApplicationError
	// for a close by either end, with Remote set for the peer's).
	Context() context.Context
	// CloseWithError closes the link, telling the peer code and reason. Idempotent.
	CloseWithError(code quic.ApplicationErrorCode, reason string) error
	SendDatagram(b []byte) error
	ReceiveDatagram(ctx context.Context) ([]byte, error)
	// writeFrame writes one framed control message (AppendMessage's output), giving up when
	// ctx ends; n > 0 with an error means the frame was cut.
	writeFrame(ctx context.Context, frame []byte) (n int, err error)
	// readMessage returns the next control message from the peer. Parse errors are returned
	// as they are; errors of a link that has ended wrap net.ErrClosed or leave Context done.
	readMessage() ([]byte, error)
}

var (
	_ link = (*vlink)(nil)
	_ link = (*tcpLink)(nil)
)

// receiveQueued returns the next datagram of q, or fails when the link (linkCtx) or ctx ends.
func receiveQueued(ctx context.Context, q <-chan []byte, linkCtx context.Context, closedErr func() error) ([]byte, error) {
	select {
	case d := <-q:
		return d, nil
	case <-linkCtx.Done():
		return nil, closedErr()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
