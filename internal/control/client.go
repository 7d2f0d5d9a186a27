package control

import (
	"context"
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
// ephemeral dual-stack UDP socket, and all channels to one server address share
// one QUIC connection (a session, see session.go); a process needs a single Client.
type Client struct {
	cfg   ClientConfig
	tr    *quic.Transport
	tls   *tls.Config
	chans registry
	once  sync.Once

	smu      sync.Mutex
	sessions map[string]*session
	dialing  map[string]*sessionDial
	closed   bool
	wg       sync.WaitGroup // session goroutines
}

// sessionDial is a session being dialed; concurrent Dials to its address wait for it.
type sessionDial struct {
	done chan struct{}
	s    *session
	err  error
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
	return &Client{cfg: c, tr: &quic.Transport{Conn: pc}, tls: clientTLS(),
		sessions: make(map[string]*session), dialing: make(map[string]*sessionDial)}, nil
}

// LocalAddr returns the client's UDP address.
func (c *Client) LocalAddr() net.Addr { return c.tr.Conn.LocalAddr() }

// Dial opens a control channel to raddr (a *net.UDPAddr; any other net.Addr,
// such as the rock's *net.TCPAddr, is resolved as "ip:port" over UDP), bound to
// rock id and its control key. It reuses the QUIC connection to raddr if there
// is one. It returns only a channel on which both ends proved the key: a refusal
// by the server wraps ErrRefused, a server that fails its proof gives
// ErrBadProof, a deadline gives a timeout net.Error.
func (c *Client) Dial(ctx context.Context, raddr net.Addr, id ID, key []byte) (*Channel, error) {
	ua, err := udpAddr(raddr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		s, err := c.session(ctx, ua)
		if err != nil {
			c.cfg.Logger.Debug("control: dial failed", "remote", ua, "err", err)
			return nil, err
		}
		ch, err := s.bind(ctx, id, key)
		if errors.Is(err, errSessionClosed) && attempt == 0 && ctx.Err() == nil {
			continue // the session ended under us: one more on a new one
		}
		if err != nil {
			c.cfg.Logger.Debug("control: dial failed", "remote", ua, "err", err)
			return nil, err
		}
		if !c.chans.add(ch) {
			ch.Close()
			return nil, ErrClosed
		}
		return ch, nil
	}
}

// session returns the live session to ua, dialing it if there is none.
func (c *Client) session(ctx context.Context, ua *net.UDPAddr) (*session, error) {
	key := ua.String()
	c.smu.Lock()
	if c.closed {
		c.smu.Unlock()
		return nil, ErrClosed
	}
	if s := c.sessions[key]; s != nil {
		if !s.stale(time.Now()) {
			c.smu.Unlock()
			return s, nil
		}
		// The peer has been silent for a while (a restarted server?): new channels go to a
		// new session; the old one ends with its last channel.
		delete(c.sessions, key)
	}
	d := c.dialing[key]
	if d != nil {
		c.smu.Unlock()
		select {
		case <-d.done:
			return d.s, d.err
		case <-ctx.Done():
			return nil, ctxError("dial "+key, ctx)
		}
	}
	d = &sessionDial{done: make(chan struct{})}
	c.dialing[key] = d
	c.smu.Unlock()
	s, err := c.dialSession(ctx, ua)
	c.smu.Lock()
	delete(c.dialing, key)
	if err == nil && c.closed {
		err = ErrClosed
	}
	if err == nil {
		s.cli, s.addr = c, key
		c.sessions[key] = s
		s.start(&c.wg)
	}
	c.smu.Unlock()
	if err != nil && s != nil {
		s.conn.CloseWithError(codeClosed, "closed")
		s = nil
	}
	d.s, d.err = s, err
	close(d.done)
	return s, err
}

// dialSession makes the QUIC connection of a new session and opens its stream.
func (c *Client) dialSession(ctx context.Context, ua *net.UDPAddr) (*session, error) {
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
	fail := func(err error) (*session, error) {
		conn.CloseWithError(codeRefused, "session failed")
		return nil, err
	}
	if !conn.ConnectionState().SupportsDatagrams.Remote {
		return fail(errors.New("control: server has no QUIC datagram support"))
	}
	ekm, err := exporter(conn)
	if err != nil {
		return fail(err)
	}
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fail(c.bindError(ctx, conn, err))
	}
	s := newSession(conn, str, ekm, c.cfg.Logger, c.cfg.IdleTimeout)
	s.client = true
	return s, nil
}

// forget drops an ended session from the map.
func (c *Client) forget(s *session) {
	c.smu.Lock()
	if c.sessions[s.addr] == s {
		delete(c.sessions, s.addr)
	}
	c.smu.Unlock()
}

// maybeEndIdle ends s if it still has no channel, so that an idle client holds no connection.
func (c *Client) maybeEndIdle(s *session) {
	c.smu.Lock()
	s.mu.Lock()
	idle := len(s.links) == 0 && len(s.pending) == 0 && !s.ended
	if idle && c.sessions[s.addr] == s {
		delete(c.sessions, s.addr)
	}
	s.mu.Unlock()
	c.smu.Unlock()
	if idle {
		s.end(codeClosed, ErrClosed)
	}
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

// Close closes every channel dialed by c (each peer learns it), then the
// sessions, the transport and its socket, and waits for the sessions'
// goroutines. It is idempotent.
func (c *Client) Close() error {
	c.once.Do(func() {
		c.chans.closeAll()
		c.smu.Lock()
		c.closed = true
		all := make([]*session, 0, len(c.sessions))
		for _, s := range c.sessions {
			all = append(all, s)
		}
		c.smu.Unlock()
		for _, s := range all {
			s.end(codeClosed, ErrClosed)
		}
		c.tr.Close()
		c.tr.Conn.Close()
		c.wg.Wait()
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
