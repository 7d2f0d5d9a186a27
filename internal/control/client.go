package control

import (
	"context"
	"crypto/hmac"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// ClientConfig configures NewClient. A nil or zero ClientConfig works.
type ClientConfig struct {
	// Logger receives debug and warning logs. Default nil: silent.
	Logger *slog.Logger
	// HandshakeTimeout bounds a whole Dial (QUIC handshake and channel
	// binding) when ctx has no earlier deadline. Default 5s.
	HandshakeTimeout time.Duration
	// IdleTimeout is the QUIC idle timeout, a safety net behind heartbeats:
	// keep it well above Interval*Misses. Default 60s. The effective value is
	// the smaller of both ends' (a peer's value counts as at least 5s).
	IdleTimeout time.Duration
}

func (c *ClientConfig) withDefaults() ClientConfig {
	var cfg ClientConfig
	if c != nil {
		cfg = *c
	}
	commonDefaults(&cfg.Logger, &cfg.HandshakeTimeout, &cfg.IdleTimeout)
	return cfg
}

// Client dials control channels. All Dials share one quic.Transport on one
// ephemeral dual-stack UDP socket; a process needs a single Client.
type Client struct {
	cfg   ClientConfig
	tr    *quic.Transport
	tls   *tls.Config
	chans registry
	once  sync.Once
}

// NewClient opens the client's UDP socket ([::]:0, or 0.0.0.0:0 where IPv6
// is unavailable).
func NewClient(cfg *ClientConfig) (*Client, error) {
	c := cfg.withDefaults()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6unspecified})
	if err != nil {
		pc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	}
	if err != nil {
		return nil, fmt.Errorf("control: client socket: %w", err)
	}
	return &Client{cfg: c, tr: &quic.Transport{Conn: pc}, tls: clientTLS()}, nil
}

// LocalAddr returns the client's UDP address.
func (c *Client) LocalAddr() net.Addr { return c.tr.Conn.LocalAddr() }

// Dial opens a control channel to raddr (a *net.UDPAddr; any other net.Addr,
// such as the rock's *net.TCPAddr, is resolved as "ip:port" over UDP), bound to
// rock id and its control key. It returns only a channel on which both ends
// proved the key: a refusal by the server wraps ErrRefused, a server that
// fails its proof gives ErrBadProof, a deadline gives a timeout net.Error.
func (c *Client) Dial(ctx context.Context, raddr net.Addr, id ID, key []byte) (*Channel, error) {
	ua, err := udpAddr(raddr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	defer cancel()
	conn, err := c.tr.Dial(ctx, ua, c.tls, quicConfig(c.cfg.HandshakeTimeout, c.cfg.IdleTimeout, false))
	if err != nil {
		if errors.Is(err, quic.ErrTransportClosed) {
			return nil, ErrClosed
		}
		if ctx.Err() != nil {
			return nil, ctxError("dial "+ua.String(), ctx)
		}
		return nil, fmt.Errorf("control: dial %s: %w", ua, err)
	}
	ch, code, err := c.bind(ctx, conn, id, key)
	if err != nil {
		conn.CloseWithError(code, "binding failed")
		c.cfg.Logger.Debug("control: dial failed", "remote", ua, "err", err)
		return nil, err
	}
	if !c.chans.add(ch) {
		ch.Close()
		return nil, ErrClosed
	}
	return ch, nil
}

// bind runs the client side of the channel binding.
func (c *Client) bind(ctx context.Context, conn *quic.Conn, id ID, key []byte) (*Channel, quic.ApplicationErrorCode, error) {
	if !conn.ConnectionState().SupportsDatagrams.Remote {
		return nil, codeRefused, errors.New("control: server has no QUIC datagram support")
	}
	ekm, err := exporter(conn)
	if err != nil {
		return nil, codeRefused, err
	}
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, codeClosed, c.bindError(ctx, conn, err)
	}
	msg := AppendClientProof(make([]byte, 0, ClientProofLen), ClientProof{ID: id, MAC: proof(key, labelClient, ekm)})
	if _, err := writeAll(ctx, str, msg); err != nil {
		return nil, codeClosed, c.bindError(ctx, conn, err)
	}
	var buf [ServerProofLen]byte
	if err := readFull(ctx, str, buf[:]); err != nil {
		return nil, codeClosed, c.bindError(ctx, conn, err)
	}
	mac, _, err := ParseServerProof(buf[:])
	if err != nil {
		return nil, codeBadProof, fmt.Errorf("%w: %w", ErrBadProof, err)
	}
	want := proof(key, labelServer, ekm)
	if !hmac.Equal(mac[:], want[:]) {
		return nil, codeBadProof, ErrBadProof
	}
	return newChannel(id, conn, str, c.cfg.Logger, c.cfg.IdleTimeout), 0, nil
}

func (c *Client) bindError(ctx context.Context, conn *quic.Conn, err error) error {
	var appErr *quic.ApplicationError
	if errors.As(err, &appErr) {
		return connError(err)
	}
	if cause := context.Cause(conn.Context()); cause != nil {
		return connError(cause)
	}
	if ctx.Err() != nil {
		return ctxError("dial "+conn.RemoteAddr().String(), ctx)
	}
	return fmt.Errorf("control: channel binding: %w", err)
}

// Close closes every channel dialed by c (each peer gets a CONNECTION_CLOSE),
// then the transport and its socket. It is idempotent.
func (c *Client) Close() error {
	c.once.Do(func() {
		c.chans.closeAll()
		c.tr.Close()
		c.tr.Conn.Close()
	})
	return nil
}

func udpAddr(a net.Addr) (*net.UDPAddr, error) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a, nil
	case *net.TCPAddr:
		return &net.UDPAddr{IP: a.IP, Port: a.Port, Zone: a.Zone}, nil
	case nil:
		return nil, errors.New("control: dial: nil address")
	}
	ua, err := net.ResolveUDPAddr("udp", a.String())
	if err != nil {
		return nil, fmt.Errorf("control: dial: %w", err)
	}
	return ua, nil
}
