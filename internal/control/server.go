package control

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"log/slog"
	"net"
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
	// HandshakeTimeout bounds, per connection, the QUIC handshake's idle time
	// and the time from the end of the QUIC handshake until the client's
	// binding proof is verified and the channel is accepted. Default 5s.
	HandshakeTimeout time.Duration
	// MaxPending bounds the QUIC connections whose binding proof is still
	// pending (or verified but not yet accepted); more are closed at once with
	// error code "busy". Default 64.
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

// Server accepts control channels on a UDP socket.
type Server struct {
	cfg      ServerConfig
	tr       *quic.Transport
	ln       *quic.Listener
	ctx      context.Context // cancelled by Close
	cancel   context.CancelFunc
	pending  chan struct{} // one token per pending handshake
	accepted chan *Channel
	chans    registry
	wg       sync.WaitGroup // accept loop and handshakes
	once     sync.Once
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
		accepted: make(chan *Channel),
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Addr returns the UDP address the server listens on.
func (s *Server) Addr() net.Addr { return s.tr.Conn.LocalAddr() }

// Accept returns the next channel whose client proved the key of its ID.
func (s *Server) Accept(ctx context.Context) (*Channel, error) {
	select {
	case ch := <-s.accepted:
		return ch, nil
	case <-s.ctx.Done():
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctxError("accept", ctx)
	}
}

// Close stops accepting, refuses pending handshakes, closes every channel it
// accepted (each peer gets a CONNECTION_CLOSE) and the socket, and waits for
// all goroutines. It is idempotent.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.cancel()
		s.ln.Close()
		s.wg.Wait()
		s.chans.closeAll()
		s.tr.Close()
		s.tr.Conn.Close()
	})
	return nil
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

// handshake verifies the client's binding proof on conn, answers with the
// server's proof and hands the channel to Accept.
func (s *Server) handshake(conn *quic.Conn) {
	defer s.wg.Done()
	defer func() { <-s.pending }()
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	ch, code, err := s.verify(ctx, conn)
	if err != nil {
		s.cfg.Logger.Debug("control: channel refused", "remote", conn.RemoteAddr(), "err", err)
		conn.CloseWithError(code, "refused")
		return
	}
	if !s.chans.add(ch) {
		ch.Close()
		return
	}
	select {
	case s.accepted <- ch:
		s.cfg.Logger.Debug("control: channel accepted", "id", ch.id, "remote", conn.RemoteAddr())
	case <-ctx.Done():
		s.cfg.Logger.Debug("control: channel not accepted in time", "id", ch.id)
		ch.shutdown(codeBusy, "not accepted")
	}
}

func (s *Server) verify(ctx context.Context, conn *quic.Conn) (*Channel, quic.ApplicationErrorCode, error) {
	if !conn.ConnectionState().SupportsDatagrams.Remote {
		return nil, codeRefused, errors.New("control: peer has no QUIC datagram support")
	}
	str, err := conn.AcceptStream(ctx)
	if err != nil {
		return nil, codeTimeout, fmt.Errorf("control: no control stream: %w", err)
	}
	var buf [ClientProofLen]byte
	if err := readFull(ctx, str, buf[:]); err != nil {
		return nil, codeTimeout, fmt.Errorf("control: no client proof: %w", err)
	}
	p, _, err := ParseClientProof(buf[:])
	if err != nil {
		return nil, codeRefused, err
	}
	ekm, err := exporter(conn)
	if err != nil {
		return nil, codeRefused, err
	}
	var key []byte
	ok := false
	if s.cfg.Key != nil {
		key, ok = s.cfg.Key(p.ID)
	}
	if !ok {
		return nil, codeRefused, fmt.Errorf("control: unknown id %x", p.ID)
	}
	want := proof(key, labelClient, ekm)
	if !hmac.Equal(p.MAC[:], want[:]) {
		return nil, codeRefused, fmt.Errorf("control: wrong client proof for id %x", p.ID)
	}
	reply := AppendServerProof(make([]byte, 0, ServerProofLen), proof(key, labelServer, ekm))
	if _, err := writeAll(ctx, str, reply); err != nil {
		return nil, codeTimeout, fmt.Errorf("control: server proof: %w", err)
	}
	return newChannel(p.ID, conn, str, s.cfg.Logger, s.cfg.IdleTimeout), 0, nil
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
