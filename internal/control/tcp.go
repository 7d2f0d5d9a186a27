package control

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/rockudp/rockudp/edp"
)

// Labels of the TCP channel binding (docs/protocol.md §3.5).
const (
	labelTCPClient = "rockudp control tcp client proof"
	labelTCPServer = "rockudp control tcp server proof"
	labelTCPUp     = "rockudp control tcp client to server"
	labelTCPDown   = "rockudp control tcp server to client"
)

// closeFrameWait bounds the write of the close frame in CloseWithError.
const closeFrameWait = 100 * time.Millisecond

// tcpBinding is what both ends of a TCP channel binding know: the rock's control key, its
// ID and both nonces.
type tcpBinding struct {
	key    []byte
	id     ID
	nc, ns [NonceLen]byte
}

// mac returns HMAC-SHA256(key, label || id || nc || ns).
func (b *tcpBinding) mac(label string) [MACLen]byte {
	m := hmac.New(sha256.New, b.key)
	m.Write([]byte(label))
	m.Write(b.id[:])
	m.Write(b.nc[:])
	m.Write(b.ns[:])
	var out [MACLen]byte
	m.Sum(out[:0])
	return out
}

// readProof reads the peer's TCPProofLen-byte proof from conn and checks it against label.
func (b *tcpBinding) readProof(conn net.Conn, label string) (bool, error) {
	var buf [TCPProofLen]byte
	if _, err := io.ReadFull(conn, buf[:]); err != nil {
		return false, err
	}
	got, _, err := ParseServerProof(buf[:])
	if err != nil {
		return false, err
	}
	want := b.mac(label)
	return hmac.Equal(got[:], want[:]), nil
}

func (b *tcpBinding) writeProof(conn net.Conn, label string) error {
	_, err := conn.Write(AppendServerProof(make([]byte, 0, TCPProofLen), b.mac(label)))
	return err
}

// newLink makes the link of a verified binding; client says which end this is.
func (b *tcpBinding) newLink(conn net.Conn, client bool, idle time.Duration) *tcpLink {
	up, down := b.mac(labelTCPUp), b.mac(labelTCPDown)
	w, r := up, down
	if !client {
		w, r = down, up
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	return &tcpLink{
		conn:   conn,
		ctx:    ctx,
		cancel: cancel,
		idle:   idle,
		dgrams: make(chan []byte, dgramQueueLen),
		r:      bufio.NewReaderSize(conn, 512),
		rmac:   hmac.New(sha256.New, r[:]),
		wmac:   hmac.New(sha256.New, w[:]),
	}
}

// dgramQueueLen bounds the heartbeats received over TCP and not yet taken by the heartbeat
// loop, like quic-go's datagram queue; more are dropped.
const dgramQueueLen = 128

// tcpLink is the TCP fallback's transport: one TCP connection carrying authenticated frames
// (datagram, message, close; docs/protocol.md §3.5). Its reader is the Channel's stream
// reader, which hands datagram frames to ReceiveDatagram through a queue.
type tcpLink struct {
	conn   net.Conn
	ctx    context.Context
	cancel context.CancelCauseFunc
	idle   time.Duration // a frame write stuck this long kills the link
	dgrams chan []byte
	once   sync.Once

	// Reader side: used by readMessage only (one goroutine).
	r    *bufio.Reader
	rmac hash.Hash
	rseq uint64

	wmu  sync.Mutex // one frame at a time
	wmac hash.Hash
	wseq uint64
}

func (l *tcpLink) LocalAddr() net.Addr      { return l.conn.LocalAddr() }
func (l *tcpLink) RemoteAddr() net.Addr     { return l.conn.RemoteAddr() }
func (l *tcpLink) Context() context.Context { return l.ctx }
func (l *tcpLink) closedErr() error         { return fmt.Errorf("%w: %w", net.ErrClosed, context.Cause(l.ctx)) }
func (l *tcpLink) fail(cause error)         { l.end(cause, nil) }
func tagOf(h hash.Hash, seq uint64, frame []byte) []byte {
	h.Reset()
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], seq)
	h.Write(s[:])
	h.Write(frame)
	var sum [sha256.Size]byte
	return h.Sum(sum[:0])[:FrameTagLen]
}

// end closes the link once with cause; before closing, frame (if any) is written if the
// writer is free.
func (l *tcpLink) end(cause error, frame func()) {
	l.once.Do(func() {
		if frame != nil && l.wmu.TryLock() {
			frame()
			l.wmu.Unlock()
		}
		l.cancel(cause)
		l.conn.Close()
	})
}

// CloseWithError sends a close frame (if no write is stuck) and closes the connection.
func (l *tcpLink) CloseWithError(code quic.ApplicationErrorCode, reason string) error {
	l.end(&quic.ApplicationError{ErrorCode: code, ErrorMessage: reason}, func() {
		_ = l.conn.SetWriteDeadline(time.Now().Add(closeFrameWait))
		_, _ = l.writeLocked(FrameClose, AppendCloseBody(nil, uint64(code), reason))
	})
	return nil
}

// writeLocked writes one frame. Under wmu.
func (l *tcpLink) writeLocked(typ byte, body []byte) (int, error) {
	b := make([]byte, 0, FrameHeaderLen+len(body)+FrameTagLen)
	b = AppendFrameHeader(b, typ, len(body))
	b = append(b, body...)
	b = append(b, tagOf(l.wmac, l.wseq, b)...)
	l.wseq++
	return l.conn.Write(b)
}

// SendDatagram writes a heartbeat frame; a write that cannot finish within the idle timeout
// kills the link.
func (l *tcpLink) SendDatagram(d []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.ctx.Err() != nil {
		return l.closedErr()
	}
	_ = l.conn.SetWriteDeadline(time.Now().Add(l.idle))
	_, err := l.writeLocked(FrameDatagram, d)
	_ = l.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		l.fail(fmt.Errorf("%w (tcp: %w)", net.ErrClosed, err))
	}
	return err
}

// ReceiveDatagram returns the next heartbeat read by the stream reader.
func (l *tcpLink) ReceiveDatagram(ctx context.Context) ([]byte, error) {
	return receiveQueued(ctx, l.dgrams, l.ctx, l.closedErr)
}

func (l *tcpLink) writeFrame(ctx context.Context, frame []byte) (int, error) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if l.ctx.Err() != nil {
		return 0, l.closedErr()
	}
	defer watchDeadline(ctx, l.conn.SetWriteDeadline)()
	n, err := l.writeLocked(FrameMessage, frame[MessageHeaderLen:])
	if err != nil && n == 0 && ctx.Err() == nil {
		err = fmt.Errorf("%w: %w", net.ErrClosed, err) // the connection failed, not ctx
	}
	return n, err
}

// readMessage reads frames until a control message arrives, queueing heartbeats on the way.
func (l *tcpLink) readMessage() ([]byte, error) {
	for {
		var hdr [FrameHeaderLen]byte
		if _, err := io.ReadFull(l.r, hdr[:]); err != nil {
			return nil, l.readFailed(err)
		}
		typ, n, err := ParseFrameHeader(hdr[:])
		if err != nil {
			return nil, err
		}
		body := make([]byte, n+FrameTagLen)
		if _, err := io.ReadFull(l.r, body); err != nil {
			return nil, l.readFailed(err)
		}
		l.rmac.Reset()
		var s [8]byte
		binary.BigEndian.PutUint64(s[:], l.rseq)
		l.rmac.Write(s[:])
		l.rmac.Write(hdr[:])
		l.rmac.Write(body[:n])
		var sum [sha256.Size]byte
		if !hmac.Equal(l.rmac.Sum(sum[:0])[:FrameTagLen], body[n:]) {
			return nil, parseError("tcp frame", ErrBadFrame)
		}
		l.rseq++
		body = body[:n:n]
		switch typ {
		case FrameDatagram:
			select {
			case l.dgrams <- body:
			default: // full: dropped, as a datagram may be
			}
		case FrameMessage:
			return body, nil
		case FrameClose:
			code, reason, err := ParseCloseBody(body)
			if err != nil {
				return nil, err
			}
			l.fail(&quic.ApplicationError{Remote: true, ErrorCode: quic.ApplicationErrorCode(code), ErrorMessage: reason})
			return nil, l.closedErr()
		}
	}
}

// readFailed ends the link after a read error (the peer is gone, or we closed).
func (l *tcpLink) readFailed(err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF // the peer closed without a close frame
	}
	l.fail(fmt.Errorf("%w (tcp: %w)", net.ErrClosed, err))
	return l.closedErr()
}

// tcpServerState is the server's rockctl/1 state between its Hello and ServeTCP.
type tcpServerState struct {
	b        tcpBinding
	verified bool
}

// TCPEnhancement returns the EDP enhancement rockctl/1, through which clients open control
// channels over TCP (DialTCP) where UDP is blocked. The rock listener lists it among its EDP
// enhancements and passes every connection to ServeTCP. Its Hello declines an unknown ID;
// its Init verifies the client's proof and answers with the server's.
func (s *Server) TCPEnhancement() edp.Enhancement {
	return edp.Enhancement{
		Name:    TCPEnhancementName,
		Version: TCPEnhancementVersion,
		Hello:   s.tcpHello,
		Init:    s.tcpInit,
	}
}

func (s *Server) tcpHello(_ edp.Role, peer []byte) ([]byte, any, error) {
	id, nc, err := ParseTCPHello(peer)
	if err != nil {
		return nil, nil, err
	}
	var key []byte
	ok := false
	if s.cfg.Key != nil {
		key, ok = s.cfg.Key(id)
	}
	if !ok {
		return nil, nil, fmt.Errorf("control: unknown id %x", id)
	}
	st := &tcpServerState{b: tcpBinding{key: key, id: id, nc: nc}}
	_, _ = rand.Read(st.b.ns[:])
	return AppendTCPChallenge(nil, st.b.ns), st, nil
}

func (s *Server) tcpInit(ctx context.Context, conn net.Conn, a *edp.Agreed) (net.Conn, error) {
	st, ok := a.State.(*tcpServerState)
	if !ok {
		return nil, errors.New("control: rockctl/1 without a Hello")
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	defer watchDeadline(ctx, conn.SetDeadline)()
	good, err := st.b.readProof(conn, labelTCPClient)
	if err != nil {
		return nil, fmt.Errorf("control: no client proof: %w", err)
	}
	if !good {
		return nil, fmt.Errorf("control: wrong client proof for id %x", st.b.id)
	}
	if err := st.b.writeProof(conn, labelTCPServer); err != nil {
		return nil, fmt.Errorf("control: server proof: %w", err)
	}
	st.verified = true
	return conn, nil
}

// findTCP returns the rockctl/1 agreement of a connection, or nil.
func findTCP(agreed []edp.Agreed) *edp.Agreed {
	for i := range agreed {
		if agreed[i].Name == TCPEnhancementName && agreed[i].Version == TCPEnhancementVersion {
			return &agreed[i]
		}
	}
	return nil
}

// ServeTCP takes conn over if it agreed on rockctl/1 and reports true: its verified
// channel is handed to Accept (or, if Accept does not take it within the handshake timeout,
// closed with code "busy"). For any other connection it reports false and leaves conn alone.
// It blocks until Accept has taken the channel or the timeout has passed.
func (s *Server) ServeTCP(conn *edp.Conn) bool {
	a := findTCP(conn.Result().Agreed)
	if a == nil {
		return false
	}
	st, ok := a.State.(*tcpServerState)
	if !ok || !st.verified {
		conn.Close()
		return true
	}
	ch := newChannel(st.b.id, st.b.newLink(conn, false, s.cfg.IdleTimeout), s.cfg.Logger, s.cfg.IdleTimeout)
	s.offer(ch)
	return true
}

// DialTCP opens a control channel over TCP, for networks that drop UDP: an EDP connection to
// addr (the rock listener's TCP address) offering only rockctl/1, on which both ends prove
// the rock's control key over fresh nonces before anything else counts (docs/protocol.md
// §3.5). d supplies the net.Dialer and the base EDP configuration (announcement, cache,
// timeouts); its Enhancements are replaced. Errors are those of Dial: ErrRefused when the
// server does not know the ID (or does not offer rockctl/1), ErrBadProof when its proof is
// wrong, a timeout net.Error when ctx or the handshake timeout ends first.
func (c *Client) DialTCP(ctx context.Context, d *edp.Dialer, network, addr string, id ID, key []byte) (*Channel, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	defer cancel()
	b := &tcpBinding{key: key, id: id}
	_, _ = rand.Read(b.nc[:])
	hello := AppendTCPHello(nil, id, b.nc)
	ecfg := &edp.Config{}
	var nd *net.Dialer
	if d != nil {
		nd = d.NetDialer
		if d.Config != nil {
			*ecfg = *d.Config
		}
	}
	ecfg.Enhancements = []edp.Enhancement{{
		Name:    TCPEnhancementName,
		Version: TCPEnhancementVersion,
		Hello:   func(edp.Role, []byte) ([]byte, any, error) { return hello, nil, nil },
		Init: func(ctx context.Context, conn net.Conn, a *edp.Agreed) (net.Conn, error) {
			ns, err := ParseTCPChallenge(a.Peer)
			if err != nil {
				return nil, err
			}
			b.ns = ns
			defer watchDeadline(ctx, conn.SetDeadline)()
			if err := b.writeProof(conn, labelTCPClient); err != nil {
				return nil, err
			}
			good, err := b.readProof(conn, labelTCPServer)
			switch {
			case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed):
				return nil, fmt.Errorf("%w: connection closed before the server proof", ErrRefused)
			case err != nil:
				return nil, err
			case !good:
				return nil, ErrBadProof
			}
			return conn, nil
		},
	}}
	ec, err := (&edp.Dialer{NetDialer: nd, Config: ecfg}).DialContext(ctx, network, addr)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ErrRefused) && !errors.Is(err, ErrBadProof) {
			return nil, ctxError("dial tcp "+addr, ctx)
		}
		return nil, fmt.Errorf("control: dial tcp %s: %w", addr, err)
	}
	if findTCP(ec.Result().Agreed) == nil {
		ec.Close()
		return nil, fmt.Errorf("%w: %s did not agree to rockctl/1 (unknown ID or no TCP fallback)", ErrRefused, addr)
	}
	ch := newChannel(id, b.newLink(ec, true, c.cfg.IdleTimeout), c.cfg.Logger, c.cfg.IdleTimeout)
	if !c.chans.add(ch) {
		ch.Close()
		return nil, ErrClosed
	}
	return ch, nil
}
