package udpnotify

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/internal/netmon"
	"github.com/rockudp/rockudp/tcprocks"
)

// Defaults of Config fields.
const (
	DefaultKeepaliveInterval = 15 * time.Second
	DefaultValidationTimeout = 3 * time.Second
	DefaultHandshakeTimeout  = 10 * time.Second
	DefaultQueueLen          = 256
	DefaultFallbackQueue     = 1 << 20
)

// maxPending bounds the path validations a sender runs at once; more candidates wait for a
// later datagram.
const maxPending = 8

// probeFirstRetry is the pause before the first probe retransmission; it doubles up to 1 s.
const probeFirstRetry = 100 * time.Millisecond

// keepaliveBurst are the pauses between the keepalives a receiver sends after a change (its
// addresses, its rock resumed), before it returns to Config.KeepaliveInterval: the first
// keepalive from a new address may leave before its route exists.
var keepaliveBurst = [...]time.Duration{0, 50 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second}

var (
	// ErrClosed is returned by the calls of a closed session. It wraps net.ErrClosed.
	ErrClosed = fmt.Errorf("udpnotify: session closed: %w", net.ErrClosed)
	// ErrNoPath is returned by PacketConn writes on the sending side before the receiver's
	// first UDP address has passed path validation: wait for the PeerMoved event.
	ErrNoPath = errors.New("udpnotify: no validated path to the peer yet (wait for its PeerMoved event)")
	// ErrNotEnhanced: the rock given to Client or Server is plain TCP, which cannot follow
	// a moving peer. Dial with tcprocks.Config.RequireEnhanced.
	ErrNotEnhanced = errors.New("udpnotify: the rock is plain TCP (the peer does not speak rocks)")
)

// Config configures a session. A nil or zero Config works; every field states its default.
// Config is never modified.
type Config struct {
	// Rock configures the rock that Dial makes (pre-shared key, policy, ...); Dial always
	// requires an enhanced peer. nil = tcprocks' defaults. Client and Server use the rock they
	// are given as it is.
	Rock *tcprocks.Config
	// Handler receives the session's events, in order, from a goroutine of the session's;
	// nil = none. Session.Subscribe adds more handlers.
	Handler callbacks.Handler
	// KeepaliveInterval is the pause between the small datagrams the receiving side sends to
	// keep NAT mappings open and to show the sender where it is. Default 15 s.
	KeepaliveInterval time.Duration
	// ValidationTimeout is how long the sending side waits for a new address to pass path
	// validation before it counts a failure. Default 3 s. Validations under way when the
	// rock suspends are restarted when it resumes; they do not fail.
	ValidationTimeout time.Duration
	// HandshakeTimeout bounds the Hello/Welcome exchange when the context has no deadline.
	// Default 10 s.
	HandshakeTimeout time.Duration
	// QueueLen is how many application datagrams wait for PacketConn reads; more are dropped
	// and counted. Default 256.
	QueueLen int
	// Fallback, when positive, lets the sending side carry its datagrams over the rock when
	// UDP between the peers fails: after Fallback without proof that the UDP path works (no
	// validated address yet, or nothing received from it), PacketConn writes go over the rock,
	// framed as tunnel data frames, until a datagram from the peer's validated address shows
	// that UDP works again. The receiver is asked for keepalives at least every Fallback/3.
	// Default 0: off, datagrams only ever travel over UDP.
	Fallback time.Duration
	// FallbackMaxAge is the age limit of the datagrams carried over the rock, with the
	// semantics of tunnel.Config.MaxAge (docs/protocol.md section 4.3): a datagram that would
	// arrive later than this after it was written is dropped, by the sender before it goes
	// into the rock and by the receiver for the time it spent in the rock. Default 0: no
	// datagram is dropped for its age (the rock delivers each once, in order).
	FallbackMaxAge time.Duration
	// FallbackQueue bounds, in bytes, the datagrams waiting to go into the rock; when it is
	// full the oldest are dropped. Default 1 MiB.
	FallbackQueue int
	// NoMonitor turns off the netlink monitor that tells the session at once when local
	// addresses change (the receiving side then re-announces its addresses only after its
	// rock resumes or at the next keepalive). Default false: a monitor per session, opened
	// in the network namespace of the thread that calls Client or Server.
	NoMonitor bool
	// Logger receives debug messages and a warning for each failed path validation;
	// nil = silent.
	Logger *slog.Logger
}

func (c *Config) withDefaults() Config {
	var d Config
	if c != nil {
		d = *c
	}
	if d.KeepaliveInterval <= 0 {
		d.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if d.ValidationTimeout <= 0 {
		d.ValidationTimeout = DefaultValidationTimeout
	}
	if d.HandshakeTimeout <= 0 {
		d.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if d.QueueLen <= 0 {
		d.QueueLen = DefaultQueueLen
	}
	if d.FallbackQueue <= 0 {
		d.FallbackQueue = DefaultFallbackQueue
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	return d
}

// Stats are a session's counters.
type Stats struct {
	// ValidationsStarted, Validated and ValidationsFailed count path validations (sending
	// side). A failure is an address that did not prove itself in time: a spoofed source,
	// an address announced for a victim, a private address behind a NAT.
	ValidationsStarted, Validated, ValidationsFailed uint64
	// EchoMismatches counts correct tokens that came back from another address than the one
	// being validated (sending side): a NAT rewrote the source, or someone replayed a token.
	EchoMismatches uint64
	// Moves counts path changes after the first: PeerMoved (sending side) or PathValidated
	// (receiving side) events with a From address.
	Moves uint64
	// KeepalivesSent and KeepalivesReceived count keepalive datagrams.
	KeepalivesSent, KeepalivesReceived uint64
	// Unvalidated counts application datagrams dropped because they came from an address
	// that is not the peer's validated one.
	Unvalidated uint64
	// QueueDrops counts application datagrams dropped because PacketConn reads lagged.
	QueueDrops uint64
	// BadDatagrams counts control datagrams that were malformed or carried another
	// session's ID or an unknown token.
	BadDatagrams uint64
	// FallbackSent and FallbackReceived count datagrams carried over the rock; FallbackDropped
	// those dropped for their age or because the fallback queue was full.
	FallbackSent, FallbackReceived, FallbackDropped uint64
}

// role is the side of a session.
type role uint8

const (
	receiver role = 1 // dials the rock, announces its UDP addresses
	sender   role = 2 // accepts the rock, validates the receiver's addresses
)

// validation is one path validation under way (sending side).
type validation struct {
	addr       netip.AddrPort
	nonce      [NonceLen]byte
	echo       [TokenLen]byte // must come back over UDP from addr
	probe      [TokenLen]byte // sent over UDP to addr, must come back over the rock
	started    time.Time
	echoOK     bool
	probeOK    bool
	nextProbe  time.Time
	probeEvery time.Duration
}

// appDatagram is an application datagram waiting for a PacketConn read.
type appDatagram struct {
	b       []byte
	info    recvInfo
	viaRock bool
}

// queued is a datagram waiting to go into the rock (fallback).
type queued struct {
	t time.Time
	b []byte
}

// Session joins a UDP flow to a rock: the rock carries the session's signalling and tells it
// when the peer is unreachable and when it is back; the session tells the application, with
// typed events (package callbacks), where the peer's UDP flow now is.
//
// The receiving side (Client, Dial) announces its UDP addresses and keeps NAT mappings open;
// the sending side (Server) sends only to an address that has passed path validation
// (docs/udpnotify.md): a keyed token sent over the rock must come back in a datagram from
// that exact address, and a token sent to that address must come back over the rock. Nobody
// can redirect the flow by spoofing datagrams or announcing someone else's address.
//
// Events: Suspended (the peer is unreachable; Cause says why), Resumed (it is back),
// PeerMoved (sending side), PathValidated (receiving side), LocalAddressChanged (both),
// TimedOut and Closed. A Session is safe for concurrent use.
type Session struct {
	cfg  Config
	role role
	rock *tcprocks.Conn
	sock *socket
	mon  *netmon.Monitor
	id   [SessionIDLen]byte
	key  [32]byte // sending side: HMAC key of the validation tokens, random per session
	pc   *PacketConn

	appq chan appDatagram

	out     chan struct{} // wakes the rock writer
	kick    chan struct{} // wakes the timer loop
	done    chan struct{} // closed by shutdown
	stopped chan struct{} // closed when everything has stopped and Closed was delivered
	wg      sync.WaitGroup

	unsubRock func()

	closeOnce sync.Once

	mu        sync.Mutex
	cause     error // why the session ended (nil: closed gracefully)
	outq      []byte
	subs      []*subscriber
	ended     bool // the Closed event has been queued: no more subscribers
	stats     Stats
	peer      netip.AddrPort // the peer's current validated UDP address (sending side) or the sender's (receiving side)
	peerStart time.Time      // sending side: when the validation that gave peer started
	src       netip.Addr     // local address the peer last wrote to: we answer from it
	srcIf     int
	// sending side
	proof     time.Time // when the UDP path last proved to work (or the session started)
	fallback  bool      // datagrams go over the rock
	fbq       []queued
	fbBytes   int
	pending   map[[NonceLen]byte]*validation
	failed    map[netip.AddrPort]time.Time // recently failed addresses, not retried for a timeout
	suspended bool
	retry     []netip.AddrPort // candidates whose validation the rock's suspension interrupted
	// receiving side
	announced  []netip.AddrPort
	seen       netip.AddrPort // the address the sender validated for us
	challenges map[[NonceLen]byte]Message
	burst      int // index into keepaliveBurst; len = periodic
	nextKA     time.Time
	kaEvery    time.Duration // the keepalive interval: the Config's, or shorter if the sender asks
	maxAge     time.Duration // the sender's age limit for datagrams over the rock
	base       staleBase
}

// Dial dials a rock to the sending side at addr ("host:port", TCP) and runs the receiving
// side of a session over it, with udp as the flow's socket (nil: a new one on all local
// addresses). The session owns the rock and the socket. ctx bounds the setup only.
func Dial(ctx context.Context, addr string, udp *net.UDPConn, cfg *Config) (*Session, error) {
	var rc tcprocks.Config
	if cfg != nil && cfg.Rock != nil {
		rc = *cfg.Rock
	}
	rc.RequireEnhanced = true
	rock, err := tcprocks.Dial(ctx, "tcp", addr, &rc)
	if err != nil {
		return nil, err
	}
	s, err := Client(ctx, rock, udp, cfg)
	if err != nil {
		rock.Close()
		return nil, err
	}
	return s, nil
}

// Client runs the receiving side of a session over rock: it announces udp's addresses
// (nil: a new socket on all local addresses) and waits for the sender's Welcome. The session
// owns rock and udp, also when Client fails. ctx bounds the handshake only.
func Client(ctx context.Context, rock *tcprocks.Conn, udp *net.UDPConn, cfg *Config) (*Session, error) {
	return start(ctx, receiver, rock, udp, cfg)
}

// Server runs the sending side of a session over rock (accepted from a tcprocks.Listener):
// it waits for the receiver's Hello, answers, and starts validating the receiver's
// addresses. udp is the flow's socket (nil: a new one on all local addresses). The session
// owns rock and udp, also when Server fails. ctx bounds the handshake only.
func Server(ctx context.Context, rock *tcprocks.Conn, udp *net.UDPConn, cfg *Config) (*Session, error) {
	return start(ctx, sender, rock, udp, cfg)
}

func start(ctx context.Context, r role, rock *tcprocks.Conn, udp *net.UDPConn, cfg *Config) (_ *Session, err error) {
	c := cfg.withDefaults()
	defer func() {
		if err != nil {
			rock.Close()
			if udp != nil {
				udp.Close()
			}
		}
	}()
	if !rock.Enhanced() {
		return nil, ErrNotEnhanced
	}
	if udp == nil {
		if udp, err = net.ListenUDP("udp", &net.UDPAddr{}); err != nil {
			return nil, fmt.Errorf("udpnotify: UDP socket: %w", err)
		}
	}
	sock, err := newSocket(udp)
	if err != nil {
		return nil, fmt.Errorf("udpnotify: turning on IP_PKTINFO: %w", err)
	}
	s := &Session{
		cfg: c, role: r, rock: rock, sock: sock,
		appq: make(chan appDatagram, c.QueueLen),
		out:  make(chan struct{}, 1), kick: make(chan struct{}, 1),
		done: make(chan struct{}), stopped: make(chan struct{}),
		pending: map[[NonceLen]byte]*validation{}, failed: map[netip.AddrPort]time.Time{},
		challenges: map[[NonceLen]byte]Message{},
		burst:      len(keepaliveBurst),
		kaEvery:    c.KeepaliveInterval,
		proof:      time.Now(),
	}
	s.pc = &PacketConn{s: s, rdl: newDeadline()}
	if c.Handler != nil {
		s.subs = append(s.subs, newSubscriber(c.Handler))
	}
	defer func() {
		if err != nil {
			for _, sub := range s.subs {
				sub.finish(true)
				<-sub.done
			}
			if s.mon != nil {
				s.mon.Close()
			}
		}
	}()
	if !c.NoMonitor {
		if s.mon, err = netmon.New(&netmon.Config{Logger: c.Logger}); err != nil {
			return nil, fmt.Errorf("udpnotify: network monitor: %w", err)
		}
	}

	hctx, cancel := context.WithTimeout(ctx, c.HandshakeTimeout)
	defer cancel()
	if dl, ok := hctx.Deadline(); ok {
		rock.SetDeadline(dl)
	}
	stop := context.AfterFunc(hctx, func() { rock.SetDeadline(time.Unix(1, 0)) })
	rd := &msgReader{r: rock}
	if r == receiver {
		err = s.clientHandshake(rd)
	} else {
		err = s.serverHandshake(rd)
	}
	stop()
	rock.SetDeadline(time.Time{})
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
		return nil, err
	}

	s.unsubRock = rock.Subscribe(callbacks.HandlerFunc(s.rockEvent))
	s.wg.Add(4)
	go s.readRock(rd)
	go s.writeRock()
	go s.readUDP()
	go s.timers()
	if s.mon != nil {
		s.mon.RegisterChangeCallback(s.netChange)
		if err := s.mon.Start(); err != nil {
			c.Logger.Warn("udpnotify: network monitor did not start; local moves are seen late", "err", err)
		}
	}
	go s.finish()
	if r == sender {
		s.mu.Lock()
		for _, a := range s.announced {
			s.candidateLocked(a)
		}
		s.mu.Unlock()
		s.poke(s.kick)
	}
	return s, nil
}

func (s *Session) clientHandshake(rd *msgReader) error {
	s.announced = s.localAddrs()
	hello := AppendMessage(nil, Message{Type: MsgHello, Version: Version, Addrs: s.announced})
	if _, err := s.rock.Write(hello); err != nil {
		return fmt.Errorf("udpnotify: sending Hello: %w", err)
	}
	m, err := rd.next()
	if err != nil {
		return fmt.Errorf("udpnotify: waiting for the sender's Welcome: %w", err)
	}
	if m.Type != MsgWelcome {
		return fmt.Errorf("%w: expected Welcome, got type %d", ErrMalformed, m.Type)
	}
	if m.Version != Version {
		return fmt.Errorf("udpnotify: the sender speaks version %d, this side %d", m.Version, Version)
	}
	ra, err := netip.ParseAddrPort(s.rock.RemoteAddr().String())
	if err != nil || m.Port == 0 {
		return fmt.Errorf("udpnotify: no UDP address for the sender (rock at %v, port %d)", s.rock.RemoteAddr(), m.Port)
	}
	s.id = m.SessionID
	s.peer = netip.AddrPortFrom(ra.Addr().Unmap(), m.Port)
	if ka := time.Duration(m.Keepalive) * time.Millisecond; ka > 0 && ka < s.kaEvery {
		s.kaEvery = ka
	}
	s.maxAge = time.Duration(m.MaxAge) * time.Millisecond
	s.burst, s.nextKA = 0, time.Now()
	return nil
}

func (s *Session) serverHandshake(rd *msgReader) error {
	m, err := rd.next()
	if err != nil {
		return fmt.Errorf("udpnotify: waiting for the receiver's Hello: %w", err)
	}
	if m.Type != MsgHello {
		return fmt.Errorf("%w: expected Hello, got type %d", ErrMalformed, m.Type)
	}
	if m.Version != Version {
		return fmt.Errorf("udpnotify: the receiver speaks version %d, this side %d", m.Version, Version)
	}
	s.announced = m.Addrs
	rand.Read(s.id[:])
	rand.Read(s.key[:])
	w := AppendMessage(nil, Message{Type: MsgWelcome, Version: Version, SessionID: s.id, Port: s.sock.port(),
		Keepalive: uint32(s.cfg.Fallback / 3 / time.Millisecond), MaxAge: uint32(s.cfg.FallbackMaxAge / time.Millisecond)})
	if _, err := s.rock.Write(w); err != nil {
		return fmt.Errorf("udpnotify: sending Welcome: %w", err)
	}
	return nil
}

// localAddrs returns the UDP addresses the receiving side announces: the socket's port on
// every usable local address of its family (loopback only when the rock runs over it).
func (s *Session) localAddrs() []netip.AddrPort {
	la, _ := s.sock.c.LocalAddr().(*net.UDPAddr)
	port := s.sock.port()
	if ip, ok := netip.AddrFromSlice(la.IP); ok && !ip.IsUnspecified() {
		return []netip.AddrPort{netip.AddrPortFrom(ip.Unmap(), port)}
	}
	// Only addresses of the rock's family, on loopback only if the rock runs over it: the
	// sender's address is of that family, and others would fail validation for nothing.
	loop, v4 := false, true
	if ra, err := netip.ParseAddrPort(s.rock.LocalAddr().String()); err == nil {
		loop, v4 = ra.Addr().Unmap().IsLoopback(), ra.Addr().Unmap().Is4()
	}
	var prefixes []netip.Prefix
	if s.mon != nil {
		prefixes = s.mon.Addrs()
	} else if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				prefixes = append(prefixes, p)
			}
		}
	}
	var out []netip.AddrPort
	for _, p := range prefixes {
		ip := p.Addr().Unmap()
		switch {
		case ip.IsLoopback() != loop, ip.IsLinkLocalUnicast(), ip.IsMulticast(), ip.IsUnspecified():
			continue
		case ip.Is4() != v4, ip.Is6() && !s.sock.v6:
			continue
		}
		if len(out) == MaxAddrs {
			break
		}
		out = append(out, netip.AddrPortFrom(ip, port))
	}
	return out
}

// ID returns the session ID.
func (s *Session) ID() [SessionIDLen]byte { return s.id }

// Rock returns the session's rock, for its state, policy and events (SetPolicy, Subscribe,
// Suspend). Do not read from it or write to it: the session's messages are its whole stream.
func (s *Session) Rock() *tcprocks.Conn { return s.rock }

// Peer returns the peer's UDP address: on the sending side the receiver's current validated
// address (nil before the first PeerMoved event), on the receiving side the sender's.
func (s *Session) Peer() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return udpAddr(s.peer)
}

// LocalAddr returns the local address of the session's UDP socket.
func (s *Session) LocalAddr() net.Addr { return s.sock.c.LocalAddr() }

// PacketConn returns the session's datagram interface (the same one on every call).
func (s *Session) PacketConn() *PacketConn { return s.pc }

// Stats returns the session's counters.
func (s *Session) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Subscribe adds a handler for the session's events and returns a function that removes it.
func (s *Session) Subscribe(h callbacks.Handler) (cancel func()) {
	sub := newSubscriber(h)
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		sub.finish(true)
		<-sub.done
		return func() {}
	}
	s.subs = append(s.subs, sub)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		for i, x := range s.subs {
			if x == sub {
				s.subs = append(s.subs[:i:i], s.subs[i+1:]...)
				break
			}
		}
		s.mu.Unlock()
		sub.finish(true)
	}
}

// Done is closed when the session has ended and its Closed event was delivered.
func (s *Session) Done() <-chan struct{} { return s.stopped }

// Err returns why the session ended: nil while it runs and after a graceful close by either
// side, an error otherwise.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cause
}

// Close ends the session: it closes the rock (gracefully, see tcprocks) and the UDP socket,
// and waits until the session's goroutines have stopped and its handlers have received the
// Closed event. Do not call it from a handler. It is idempotent.
func (s *Session) Close() error {
	s.shutdown(nil)
	<-s.stopped
	return nil
}

// shutdown starts ending the session; it never waits.
func (s *Session) shutdown(cause error) {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.cause = cause
		s.mu.Unlock()
		close(s.done)
		s.rock.Close()
		s.sock.c.Close()
	})
}

// finish waits for the session to end, then stops everything and delivers Closed.
func (s *Session) finish() {
	<-s.done
	if s.mon != nil {
		s.mon.Close()
	}
	s.unsubRock()
	s.wg.Wait()
	s.mu.Lock()
	cause := s.cause
	subs := s.subs
	s.subs, s.ended = nil, true
	s.mu.Unlock()
	for _, sub := range subs {
		sub.push(callbacks.Event{Kind: callbacks.Closed, Time: time.Now(), ID: s.rock.ID(), Cause: cause})
		sub.finish(false)
	}
	for _, sub := range subs {
		<-sub.done
	}
	close(s.stopped)
}

// emitLocked queues e for every handler. Under mu; handlers run later, without the lock.
func (s *Session) emitLocked(e callbacks.Event) {
	e.Time = time.Now()
	e.ID = s.rock.ID()
	for _, sub := range s.subs {
		sub.push(e)
	}
}

func (s *Session) poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// sendLocked queues m for the rock. Under mu.
func (s *Session) sendLocked(m Message) {
	s.outq = AppendMessage(s.outq, m)
	s.poke(s.out)
}

// writeRock writes queued messages to the rock; writes block while the rock is suspended.
func (s *Session) writeRock() {
	defer s.wg.Done()
	var buf []byte
	for {
		select {
		case <-s.done:
			return
		case <-s.out:
		}
		s.mu.Lock()
		buf, s.outq = s.outq, buf[:0]
		buf = s.appendFallbackLocked(buf, time.Now())
		s.mu.Unlock()
		if len(buf) == 0 {
			continue
		}
		if _, err := s.rock.Write(buf); err != nil {
			s.shutdown(s.rockError(err))
			return
		}
	}
}

// appendFallbackLocked appends the queued fallback datagrams to b as Datagram messages,
// dropping those older than the max-age. Under mu.
func (s *Session) appendFallbackLocked(b []byte, now time.Time) []byte {
	for _, q := range s.fbq {
		if s.cfg.FallbackMaxAge > 0 && now.Sub(q.t) > s.cfg.FallbackMaxAge {
			s.stats.FallbackDropped++
			continue
		}
		b = AppendMessage(b, Message{Type: MsgDatagram, Time: uint32(q.t.UnixMilli()), Payload: q.b})
		s.stats.FallbackSent++
	}
	clear(s.fbq)
	s.fbq, s.fbBytes = s.fbq[:0], 0
	return b
}

// queueFallback queues b to go over the rock; when the queue is full the oldest go.
func (s *Session) queueFallback(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(b) > MaxFallbackPayload {
		s.stats.FallbackDropped++
		return
	}
	for len(s.fbq) > 0 && s.fbBytes+len(b) > s.cfg.FallbackQueue {
		s.fbBytes -= len(s.fbq[0].b)
		s.fbq = s.fbq[1:]
		s.stats.FallbackDropped++
	}
	s.fbq = append(s.fbq, queued{t: time.Now(), b: append([]byte(nil), b...)})
	s.fbBytes += len(b)
	s.poke(s.out)
}

// rockError turns a rock error into the session's cause: nil for a graceful end.
func (s *Session) rockError(err error) error {
	var te *tcprocks.Error
	if errors.As(err, &te) {
		return err
	}
	select {
	case <-s.done:
		return nil
	default:
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, tcprocks.ErrPeerClosed) || errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// readRock reads and handles the peer's messages until the rock ends.
func (s *Session) readRock(rd *msgReader) {
	defer s.wg.Done()
	for {
		m, err := rd.next()
		if err != nil {
			if errors.Is(err, ErrMalformed) {
				s.cfg.Logger.Warn("udpnotify: malformed message from the peer; closing the session", "err", err)
			}
			s.shutdown(s.rockError(err))
			return
		}
		s.mu.Lock()
		switch {
		case s.role == sender && m.Type == MsgAddr:
			s.announced = m.Addrs
			for _, a := range m.Addrs {
				s.candidateLocked(a)
			}
		case s.role == sender && m.Type == MsgProbeAck:
			if v := s.pending[m.Nonce]; v != nil && hmac.Equal(v.probe[:], m.Token[:]) {
				v.probeOK = true
				s.completeLocked(v)
			}
		case s.role == receiver && m.Type == MsgChallenge:
			if len(s.challenges) >= maxPending*2 {
				clear(s.challenges)
			}
			s.challenges[m.Nonce] = m
			s.echoLocked(m)
		case s.role == receiver && m.Type == MsgDatagram:
			s.stats.FallbackReceived++
			if s.maxAge > 0 && s.base.extra(time.Now(), m.Time) > s.maxAge {
				s.stats.FallbackDropped++
				break
			}
			select {
			case s.appq <- appDatagram{b: append([]byte(nil), m.Payload...), info: recvInfo{From: s.peer}, viaRock: true}:
			default:
				s.stats.QueueDrops++
			}
		case s.role == receiver && m.Type == MsgValidated:
			if m.Addr != s.seen {
				from := udpAddr(s.seen)
				if s.seen.IsValid() {
					s.stats.Moves++
				}
				s.seen = m.Addr
				s.emitLocked(callbacks.Event{Kind: callbacks.PathValidated, From: from, To: udpAddr(m.Addr)})
			}
		default:
			s.mu.Unlock()
			s.cfg.Logger.Warn("udpnotify: unexpected message from the peer; closing the session", "type", m.Type)
			s.shutdown(fmt.Errorf("%w: unexpected message type %d", ErrMalformed, m.Type))
			return
		}
		s.mu.Unlock()
		s.poke(s.kick)
	}
}

// echoLocked answers a challenge: its token goes back over UDP from the challenged address
// (when it is local; behind a NAT the kernel's choice is what the NAT rewrites). Under mu.
func (s *Session) echoLocked(m Message) {
	d := AppendDatagram(nil, Datagram{Type: DgEcho, SessionID: s.id, Nonce: m.Nonce, Token: m.Token})
	s.sock.write(d, s.peer, m.Addr.Addr())
}

// candidateLocked starts validating a if it is new. Under mu.
func (s *Session) candidateLocked(a netip.AddrPort) {
	if a == s.peer || len(s.pending) >= maxPending || (a.Addr().Is6() && !s.sock.v6) {
		return
	}
	if s.suspended {
		if len(s.retry) < maxPending {
			s.retry = append(s.retry, a)
		}
		return
	}
	for _, v := range s.pending {
		if v.addr == a {
			return
		}
	}
	now := time.Now()
	if t, ok := s.failed[a]; ok && now.Sub(t) < s.cfg.ValidationTimeout {
		return
	}
	v := &validation{addr: a, started: now, nextProbe: now, probeEvery: probeFirstRetry}
	rand.Read(v.nonce[:])
	v.echo = s.token("echo", a, v.nonce)
	v.probe = s.token("probe", a, v.nonce)
	s.pending[v.nonce] = v
	s.stats.ValidationsStarted++
	s.cfg.Logger.Debug("udpnotify: validating a path", "addr", a)
	s.sendLocked(Message{Type: MsgChallenge, Nonce: v.nonce, Addr: a, Token: v.echo})
	s.poke(s.kick)
}

// token is HMAC-SHA256(key, label ‖ session ID ‖ address ‖ nonce), truncated.
func (s *Session) token(label string, a netip.AddrPort, nonce [NonceLen]byte) [TokenLen]byte {
	h := hmac.New(sha256.New, s.key[:])
	h.Write([]byte(label))
	h.Write(s.id[:])
	h.Write(appendAddr(nil, a))
	h.Write(nonce[:])
	return [TokenLen]byte(h.Sum(nil))
}

// completeLocked makes v's address the peer's once both halves of the validation are done.
// Under mu.
func (s *Session) completeLocked(v *validation) {
	if !v.echoOK || !v.probeOK {
		return
	}
	delete(s.pending, v.nonce)
	delete(s.failed, v.addr)
	s.stats.Validated++
	if !v.started.Before(s.peerStart) {
		s.proof = time.Now()
	}
	if v.started.Before(s.peerStart) || v.addr == s.peer {
		return // an older validation finished after a newer one: keep the newer path
	}
	old := s.peer
	s.peer, s.peerStart = v.addr, v.started
	s.src, s.srcIf = netip.Addr{}, 0
	if old.IsValid() {
		s.stats.Moves++
	}
	s.cfg.Logger.Debug("udpnotify: peer moved", "from", old, "to", v.addr)
	s.emitLocked(callbacks.Event{Kind: callbacks.PeerMoved, From: udpAddr(old), To: udpAddr(v.addr)})
	s.sendLocked(Message{Type: MsgValidated, Addr: v.addr})
}

// readUDP reads the session's socket: control datagrams are handled, the application's
// are queued for PacketConn.
func (s *Session) readUDP() {
	defer s.wg.Done()
	buf := make([]byte, 65536)
	oob := make([]byte, oobLen)
	for {
		n, ri, err := s.sock.read(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-s.done:
				return
			case <-time.After(10 * time.Millisecond): // e.g. ICMP errors reported on the socket
			}
			continue
		}
		b := buf[:n]
		if IsControl(b) {
			s.control(b, ri)
			continue
		}
		s.mu.Lock()
		ok := ri.From == s.peer
		if ok {
			s.src, s.srcIf = ri.Dst, ri.IfIndex
			s.proof = time.Now()
		} else {
			s.stats.Unvalidated++
		}
		s.mu.Unlock()
		if !ok {
			continue
		}
		select {
		case s.appq <- appDatagram{b: append([]byte(nil), b...), info: ri}:
		default:
			s.mu.Lock()
			s.stats.QueueDrops++
			s.mu.Unlock()
		}
	}
}

// control handles one control datagram.
func (s *Session) control(b []byte, ri recvInfo) {
	d, err := ParseDatagram(b)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil || d.SessionID != s.id {
		s.stats.BadDatagrams++
		return
	}
	if ri.From == s.peer {
		s.src, s.srcIf = ri.Dst, ri.IfIndex
		s.proof = time.Now()
	}
	switch {
	case s.role == sender && d.Type == DgKeepalive:
		s.stats.KeepalivesReceived++
		s.candidateLocked(ri.From)
	case s.role == sender && d.Type == DgEcho:
		v := s.pending[d.Nonce]
		if v == nil {
			return // a late copy after the validation ended
		}
		if !hmac.Equal(v.echo[:], d.Token[:]) {
			s.stats.BadDatagrams++
			return
		}
		if ri.From != v.addr {
			s.stats.EchoMismatches++
			s.cfg.Logger.Debug("udpnotify: echo from another address than the one validated", "want", v.addr, "got", ri.From)
			s.candidateLocked(ri.From)
			return
		}
		v.echoOK = true
		s.completeLocked(v)
	case s.role == receiver && d.Type == DgProbe:
		// The token reached us at this address: prove it over the rock, and echo again in
		// case the first echo was lost.
		s.sendLocked(Message{Type: MsgProbeAck, Nonce: d.Nonce, Token: d.Token})
		if m, ok := s.challenges[d.Nonce]; ok {
			s.echoLocked(m)
		}
	default:
		s.stats.BadDatagrams++
	}
}

// timers sends keepalives (receiving side) and probes and expires validations (sending side).
func (s *Session) timers() {
	defer s.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := s.tick(time.Now())
		t.Reset(time.Until(next))
		select {
		case <-s.done:
			return
		case <-s.kick:
		case <-t.C:
		}
	}
}

// tick does what is due at now and returns when it should run again.
func (s *Session) tick(now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := now.Add(time.Hour)
	if s.role == receiver {
		if !now.Before(s.nextKA) {
			ka := AppendDatagram(nil, Datagram{Type: DgKeepalive, SessionID: s.id})
			if refused, err := s.sock.write(ka, s.peer, s.src); err == nil {
				s.stats.KeepalivesSent++
			} else if refused {
				s.src = netip.Addr{}
			}
			if s.burst < len(keepaliveBurst)-1 && keepaliveBurst[s.burst+1] < s.kaEvery {
				s.burst++
				s.nextKA = now.Add(keepaliveBurst[s.burst])
			} else {
				s.burst = len(keepaliveBurst)
				s.nextKA = now.Add(s.kaEvery)
			}
		}
		return s.nextKA
	}
	if s.cfg.Fallback > 0 {
		fb := s.fallbackLocked(now)
		if fb != s.fallback {
			s.fallback = fb
			s.cfg.Logger.Info("udpnotify: datagrams now travel over the rock", "on", fb, "peer", s.peer)
		}
		if e := s.proof.Add(s.cfg.Fallback); !fb && e.Before(next) {
			next = e
		}
	}
	for nonce, v := range s.pending {
		if now.Sub(v.started) >= s.cfg.ValidationTimeout {
			delete(s.pending, nonce)
			s.failed[v.addr] = now
			s.stats.ValidationsFailed++
			s.cfg.Logger.Warn("udpnotify: path validation failed: the address did not prove itself",
				"addr", v.addr, "echo", v.echoOK, "probe", v.probeOK)
			continue
		}
		if !v.probeOK && !now.Before(v.nextProbe) {
			p := AppendDatagram(nil, Datagram{Type: DgProbe, SessionID: s.id, Nonce: v.nonce, Token: v.probe})
			s.sock.write(p, v.addr, netip.Addr{})
			v.nextProbe = now.Add(v.probeEvery)
			v.probeEvery = min(2*v.probeEvery, time.Second)
		}
		if !v.probeOK && v.nextProbe.Before(next) {
			next = v.nextProbe
		}
		if e := v.started.Add(s.cfg.ValidationTimeout); e.Before(next) {
			next = e
		}
	}
	for a, t := range s.failed {
		if now.Sub(t) >= s.cfg.ValidationTimeout {
			delete(s.failed, a)
		}
	}
	return next
}

// fallbackLocked reports whether datagrams should go over the rock at now. Under mu.
func (s *Session) fallbackLocked(now time.Time) bool {
	return s.role == sender && s.cfg.Fallback > 0 && now.Sub(s.proof) > s.cfg.Fallback
}

// Fallback reports whether the session carries its datagrams over the rock now (sending side,
// Config.Fallback).
func (s *Session) Fallback() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fallbackLocked(time.Now())
}

// staleBase estimates, on the receiving side, how much longer than the fastest recent
// datagram one carried over the rock took (docs/protocol.md section 4.3): base is the least
// (receiver clock − sender clock) of this minute's and the previous minute's datagrams.
type staleBase struct {
	minute    int64
	cur, prev int64
	have      bool
}

// extra returns the extra delay of a datagram sent at the sender's millisecond clock t.
func (b *staleBase) extra(now time.Time, t uint32) time.Duration {
	d := int64(int32(uint32(now.UnixMilli()) - t))
	m := now.Unix() / 60
	switch {
	case !b.have:
		b.cur, b.prev, b.minute, b.have = d, d, m, true
	case m != b.minute:
		b.prev, b.cur, b.minute = b.cur, d, m
	}
	b.cur = min(b.cur, d)
	return time.Duration(d-min(b.cur, b.prev)) * time.Millisecond
}

// rockEvent follows the rock's events: the peer is unreachable (Suspended), back (Resumed),
// or gone for good (TimedOut; the session then ends through its reader).
func (s *Session) rockEvent(e callbacks.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch e.Kind {
	case callbacks.Suspended:
		s.suspended = true
		for nonce, v := range s.pending { // no proof can come back now: try again on resume
			delete(s.pending, nonce)
			s.retry = append(s.retry, v.addr)
		}
		s.emitLocked(callbacks.Event{Kind: callbacks.Suspended, Cause: e.Cause})
	case callbacks.Resumed:
		s.suspended = false
		s.emitLocked(callbacks.Event{Kind: callbacks.Resumed, Local: e.Local, Remote: e.Remote, Downtime: e.Downtime, Replayed: e.Replayed})
		if s.role == sender {
			retry := s.retry
			s.retry = nil
			for _, a := range retry {
				s.candidateLocked(a)
			}
		} else {
			s.reannounceLocked()
		}
	case callbacks.TimedOut:
		s.emitLocked(callbacks.Event{Kind: callbacks.TimedOut, Cause: e.Cause, Downtime: e.Downtime})
	}
}

// reannounceLocked sends the receiver's addresses and restarts the keepalive burst. Under mu.
func (s *Session) reannounceLocked() {
	s.announced = s.localAddrs()
	s.sendLocked(Message{Type: MsgAddr, Addrs: s.announced})
	s.burst, s.nextKA = 0, time.Now()
	s.poke(s.kick)
}

// netChange follows the machine's addresses (netmon callback).
func (s *Session) netChange(d *netmon.ChangeDelta) {
	if len(d.Added) == 0 && len(d.Removed) == 0 && !d.AddressAppeared() {
		return
	}
	port := s.sock.port()
	suspend := false
	s.mu.Lock()
	if len(d.Added) > 0 || len(d.Removed) > 0 {
		e := callbacks.Event{Kind: callbacks.LocalAddressChanged}
		if len(d.Removed) > 0 {
			e.From = udpAddr(netip.AddrPortFrom(d.Removed[0], port))
		}
		if len(d.Added) > 0 {
			e.To = udpAddr(netip.AddrPortFrom(d.Added[0], port))
		}
		s.emitLocked(e)
	}
	if s.src.IsValid() && d.InterfaceIPDisappeared(s.src) {
		s.src, s.srcIf = netip.Addr{}, 0
	}
	if s.role == receiver {
		if la, err := netip.ParseAddrPort(s.rock.LocalAddr().String()); err == nil && d.InterfaceIPDisappeared(la.Addr().Unmap()) {
			suspend = true
		}
		s.reannounceLocked()
	}
	s.mu.Unlock()
	if suspend {
		// The rock's address is gone: reconnect now rather than after missed heartbeats.
		s.rock.Suspend()
	}
}

// udpAddr converts a to a *net.UDPAddr, or to a nil net.Addr if a is invalid.
func udpAddr(a netip.AddrPort) net.Addr {
	if !a.IsValid() {
		return nil
	}
	return net.UDPAddrFromAddrPort(a)
}
