package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Defaults of ServerConfig and ClientConfig.
const (
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultIdleTimeout      = 60 * time.Second
	DefaultMaxPending       = 64
)

// ServerConfig configures Listen. A nil or zero ServerConfig works (and
// refuses every channel, since there is no Key function).
type ServerConfig struct {
	// Key returns the control key of rock id. nil, or ok == false, refuses
	// the channel. It is called concurrently from handshake goroutines.
	Key func(id ID) (key []byte, ok bool)
	// Logger receives debug and warning logs. Default nil: silent.
	Logger *slog.Logger
	// HandshakeTimeout bounds, per session, the QUIC handshake's idle time and
	// the time from the end of the QUIC handshake until its first channel is
	// bound; per channel, the time a verified channel waits for Accept (and, on
	// the TCP fallback, for the client's proof). Default 5s.
	HandshakeTimeout time.Duration
	// MaxPending bounds the QUIC connections (sessions) on which no channel
	// has been bound yet; more are closed at once with error code "busy".
	// Default 64.
	MaxPending int
	// IdleTimeout is the QUIC idle timeout, a safety net behind heartbeats:
	// keep it well above Interval*Misses. Default 60s. The effective value is
	// the smaller of both ends' (a peer's value counts as at least 5s).
	IdleTimeout time.Duration
}

func (c *ServerConfig) withDefaults() ServerConfig {
	var cfg ServerConfig
	if c != nil {
		cfg = *c
	}
	commonDefaults(&cfg.Logger, &cfg.HandshakeTimeout, &cfg.IdleTimeout)
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	return cfg
}

// commonDefaults fills the fields ServerConfig and ClientConfig share.
func commonDefaults(log **slog.Logger, handshake, idle *time.Duration) {
	if *log == nil {
		*log = slog.New(slog.DiscardHandler)
	}
	if *handshake <= 0 {
		*handshake = DefaultHandshakeTimeout
	}
	if *idle <= 0 {
		*idle = DefaultIdleTimeout
	}
}

// Server accepts control channels on a UDP socket: one QUIC connection (a session) per
// client process, carrying the channels of all its rocks.
type Server struct {
	cfg     ServerConfig
	tr      *quic.Transport
	ln      *quic.Listener
	ctx     context.Context // cancelled by Close
	cancel  context.CancelFunc
	pending chan struct{} // one token per session without a bound channel yet
	chans   registry
	wg      sync.WaitGroup // accept loop and handshakes
	swg     sync.WaitGroup // session goroutines
	once    sync.Once

	mu       sync.Mutex
	queue    []*Channel    // verified channels waiting for Accept
	queued   chan struct{} // signalled when queue grows
	sessions map[*session]struct{}
	closed   bool
}

// Listen serves control channels on pc (the UDP twin of the rock's TCP port).
// The server owns pc from now on and closes it in Close. It makes a fresh
// self-signed Ed25519 certificate; clients do not verify it, the channel
// binding authenticates both ends.
func Listen(pc net.PacketConn, cfg *ServerConfig) (*Server, error) {
	c := cfg.withDefaults()
	cert, err := selfSignedCert()
	if err != nil {
		return nil, fmt.Errorf("control: certificate: %w", err)
	}
	tr := &quic.Transport{Conn: pc}
	ln, err := tr.Listen(serverTLS(cert), quicConfig(c.HandshakeTimeout, c.IdleTimeout, true))
	if err != nil {
		tr.Close()
		return nil, fmt.Errorf("control: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:      c,
		tr:       tr,
		ln:       ln,
		ctx:      ctx,
		cancel:   cancel,
		pending:  make(chan struct{}, c.MaxPending),
		queued:   make(chan struct{}, 1),
		sessions: make(map[*session]struct{}),
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Addr returns the UDP address the server listens on.
func (s *Server) Addr() net.Addr { return s.tr.Conn.LocalAddr() }

// Accept returns the next channel whose client proved the key of its ID.
func (s *Server) Accept(ctx context.Context) (*Channel, error) {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			ch := s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
			s.mu.Unlock()
			ch.acceptTimer.Stop()
			return ch, nil
		}
		s.mu.Unlock()
		select {
		case <-s.queued:
		case <-s.ctx.Done():
			return nil, ErrClosed
		case <-ctx.Done():
			return nil, ctxError("accept", ctx)
		}
	}
}

// offer registers a verified channel and queues it for Accept; a channel not accepted within
// the handshake timeout is closed with code "busy".
func (s *Server) offer(ch *Channel) {
	if !s.chans.add(ch) {
		ch.Close()
		return
	}
	s.mu.Lock()
	s.queue = append(s.queue, ch)
	ch.acceptTimer = time.AfterFunc(s.cfg.HandshakeTimeout, func() {
		s.mu.Lock()
		i := slices.Index(s.queue, ch)
		if i >= 0 {
			s.queue = slices.Delete(s.queue, i, i+1)
		}
		s.mu.Unlock()
		if i >= 0 {
			s.cfg.Logger.Debug("control: channel not accepted in time", "id", ch.id)
			ch.shutdown(codeBusy, "not accepted")
		}
	})
	s.mu.Unlock()
	select {
	case s.queued <- struct{}{}:
	default:
	}
	s.cfg.Logger.Debug("control: channel verified", "id", ch.id, "remote", ch.RemoteAddr(), "network", ch.Network())
}

// Close stops accepting, refuses pending handshakes, closes every channel it
// accepted (each peer learns it) and every session, then the socket, and waits
// for all goroutines. It is idempotent.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.cancel()
		s.ln.Close()
		s.wg.Wait()
		s.chans.closeAll()
		s.mu.Lock()
		s.closed = true
		all := make([]*session, 0, len(s.sessions))
		for ss := range s.sessions {
			all = append(all, ss)
		}
		s.mu.Unlock()
		for _, ss := range all {
			ss.end(codeClosed, ErrClosed)
		}
		s.tr.Close()
		s.tr.Conn.Close()
		s.swg.Wait()
	})
	return nil
}

func (s *Server) forget(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept(s.ctx)
		if err != nil {
			return
		}
		select {
		case s.pending <- struct{}{}:
			s.wg.Add(1)
			go s.handshake(conn)
		default:
			s.cfg.Logger.Warn("control: too many pending handshakes", "remote", conn.RemoteAddr())
			conn.CloseWithError(codeBusy, "busy")
		}
	}
}

// handshake waits for the client's session stream and starts the session. The session keeps
// its pending token until its first channel is bound; one that binds none within the
// handshake timeout is closed.
func (s *Server) handshake(conn *quic.Conn) {
	defer s.wg.Done()
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	fail := func(code quic.ApplicationErrorCode, err error) {
		<-s.pending
		s.cfg.Logger.Debug("control: session refused", "remote", conn.RemoteAddr(), "err", err)
		conn.CloseWithError(code, "refused")
	}
	if !conn.ConnectionState().SupportsDatagrams.Remote {
		fail(codeRefused, errors.New("control: peer has no QUIC datagram support"))
		return
	}
	ekm, err := exporter(conn)
	if err != nil {
		fail(codeRefused, err)
		return
	}
	str, err := conn.AcceptStream(ctx)
	if err != nil {
		fail(codeTimeout, fmt.Errorf("control: no control stream: %w", err))
		return
	}
	ss := newSession(conn, str, ekm, s.cfg.Logger, s.cfg.IdleTimeout)
	ss.srv, ss.hasToken = s, true
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		fail(codeClosed, ErrClosed)
		return
	}
	s.sessions[ss] = struct{}{}
	ss.start(&s.swg)
	s.mu.Unlock()
	// A session that binds no channel in time gives its token back and ends.
	time.AfterFunc(s.cfg.HandshakeTimeout, func() {
		ss.mu.Lock()
		unbound := ss.hasToken
		ss.mu.Unlock()
		if unbound {
			ss.fail(codeTimeout, errors.New("control: no channel bound within the handshake timeout"))
		}
	})
}

// registry is the set of live channels of a Server or Client, closed by its Close.
type registry struct {
	mu     sync.Mutex
	m      map[*Channel]struct{}
	closed bool
}

// add registers ch; false if the owner is closed.
func (r *registry) add(ch *Channel) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	if r.m == nil {
		r.m = make(map[*Channel]struct{})
	}
	r.m[ch] = struct{}{}
	ch.owner = r
	return true
}

func (r *registry) remove(ch *Channel) {
	r.mu.Lock()
	delete(r.m, ch)
	r.mu.Unlock()
}

// closeAll closes every registered channel; later adds fail.
func (r *registry) closeAll() {
	r.mu.Lock()
	r.closed = true
	all := make([]*Channel, 0, len(r.m))
	for ch := range r.m {
		all = append(all, ch)
	}
	r.mu.Unlock()
	for _, ch := range all {
		ch.Close()
	}
}
