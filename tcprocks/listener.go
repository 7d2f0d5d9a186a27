package tcprocks

import (
	"context"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/control"
)

// Listener accepts rocks (and, from ordinary clients, plain TCP connections) on a TCP listener,
// and serves the rocks' control channels over QUIC on the UDP port with the same number, and
// over TCP (EDP enhancement rockctl/1) on its own port for clients whose UDP is blocked.
//
// It routes every resume request, by connection ID, to the suspended rock it belongs to. Only
// the dialing side of a rock reconnects (the listening side has no address for a client that
// may have moved); an accepted rock that is suspended waits for its client to come back.
//
// Close stops Accept. The TCP port and the control server stay open, so that rocks already
// accepted can still resume, until every one of them has closed.
type Listener struct {
	cfg   *Config
	inner net.Listener
	el    *edp.Listener
	pc    net.PacketConn
	ownPC bool
	ctl   *control.Server

	queue   chan *Conn    // accepted conns waiting for Accept
	closed  chan struct{} // Close was called
	stopped chan struct{} // everything is shut down
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	sem     chan struct{} // bounds connections being set up

	mu       sync.Mutex
	rocks    map[[idLen]byte]*Conn
	isClosed bool
	shutOnce sync.Once

	// Limits (Config.MaxSuspended, ...): rocks suspended now, bytes held by in-flight
	// buffers, handshakes pending, and recent resume attempts per ID.
	suspended atomic.Int64
	inflight  atomic.Int64
	pending   atomic.Int64
	attempts  map[[idLen]byte]*bucket // under mu
}

var _ net.Listener = (*Listener)(nil)

// initState is the server's Hello state for a new rock.
type initState struct {
	id       [idLen]byte
	keys     keys
	local    limits
	peer     limits
	pubs     [2][]byte
	peerPSK  bool   // the client has a pre-shared key
	peerName string // the client's locator name
}

// resumeState is the server's Hello state for a resume request.
type resumeState struct {
	rock *Conn // nil: refused
	req  resumeMsg
	ns   [nonceLen]byte
}

// busy reports whether MaxPendingHandshakes handshakes are pending (in serve, between the
// Hello and the end of CONFIRM, PROOF and the Authenticator). Counting starts in serve, not at
// the Hello, so that a handshake edp abandons after the Hello holds nothing; edp's own
// MaxPending and ClassifyTimeout bound that stage.
func (l *Listener) busy() bool {
	return l.pending.Load() >= int64(l.cfg.MaxPendingHandshakes)
}

// bucket is a token bucket of resume attempts for one connection ID.
type bucket struct {
	tokens float64
	last   time.Time
}

// allowResume reports whether another resume attempt for id is allowed now
// (Config.MaxResumeRate per second, burst as many). Under no lock.
func (l *Listener) allowResume(id [idLen]byte) bool {
	rate := float64(l.cfg.MaxResumeRate)
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.attempts[id]
	if b == nil {
		if len(l.attempts) >= len(l.rocks)+1024 {
			// Forget idle buckets: a full one is no different from none.
			for k, x := range l.attempts {
				if now.Sub(x.last).Seconds()*rate >= rate {
					delete(l.attempts, k)
				}
			}
		}
		b = &bucket{tokens: rate, last: now}
		l.attempts[id] = b
	}
	b.tokens = min(rate, b.tokens+now.Sub(b.last).Seconds()*rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// initRefusal returns the reason to refuse a new rock now, or 0.
func (l *Listener) initRefusal() uint8 {
	l.mu.Lock()
	full := len(l.rocks) >= l.cfg.MaxRocks || l.isClosed
	l.mu.Unlock()
	switch {
	case full:
		return refuseFull
	case l.suspended.Load() >= int64(l.cfg.MaxSuspended):
		return refuseSuspended
	case l.inflight.Load() >= l.cfg.MaxInFlightMemory:
		return refuseMemory
	}
	return 0
}

// Listen listens on addr ("tcp", "tcp4", "tcp6") for TCP and on the same address and port
// number for UDP (control channels). With port 0 it picks a port free for both.
func Listen(network, addr string, cfg *Config) (*Listener, error) {
	udpNet := map[string]string{"tcp": "udp", "tcp4": "udp4", "tcp6": "udp6"}[network]
	if udpNet == "" {
		return nil, fmt.Errorf("tcprocks: listen %s: unsupported network %q", addr, network)
	}
	var lastErr error
	for range 20 {
		inner, err := net.Listen(network, addr)
		if err != nil {
			return nil, fmt.Errorf("tcprocks: listen: %w", err)
		}
		ta := inner.Addr().(*net.TCPAddr)
		pc, err := net.ListenPacket(udpNet, net.JoinHostPort(ta.IP.String(), fmt.Sprint(ta.Port)))
		if err != nil {
			inner.Close()
			lastErr = err
			if _, port, _ := net.SplitHostPort(addr); port == "0" {
				continue // the ephemeral TCP port's UDP twin is taken: try another
			}
			break
		}
		c := cfg.withDefaults()
		l, err := newListener(inner, pc, true, c)
		if err != nil {
			inner.Close()
			pc.Close()
			return nil, err
		}
		return l, nil
	}
	return nil, fmt.Errorf("tcprocks: listen %s: control port: %w", addr, lastErr)
}

// NewListener makes a Listener over inner, which must be a TCP listener (or cfg.ControlConn
// must be set). The control server listens on UDP at inner's address and port number.
func NewListener(inner net.Listener, cfg *Config) (*Listener, error) {
	c := cfg.withDefaults()
	pc, own := c.ControlConn, false
	if pc == nil {
		ta, ok := inner.Addr().(*net.TCPAddr)
		if !ok {
			return nil, fmt.Errorf("tcprocks: listener address %v is not TCP; set Config.ControlConn", inner.Addr())
		}
		var err error
		pc, err = net.ListenUDP("udp", &net.UDPAddr{IP: ta.IP, Port: ta.Port, Zone: ta.Zone})
		if err != nil {
			return nil, fmt.Errorf("tcprocks: control port: %w", err)
		}
		own = true
	}
	l, err := newListener(inner, pc, own, c)
	if err != nil && own {
		pc.Close()
	}
	return l, err
}

func newListener(inner net.Listener, pc net.PacketConn, ownPC bool, c *Config) (*Listener, error) {
	l := &Listener{
		cfg:      c,
		inner:    inner,
		pc:       pc,
		ownPC:    ownPC,
		queue:    make(chan *Conn, 128),
		closed:   make(chan struct{}),
		stopped:  make(chan struct{}),
		sem:      make(chan struct{}, 1024),
		rocks:    make(map[[idLen]byte]*Conn),
		attempts: make(map[[idLen]byte]*bucket),
	}
	if err := checkName(c.Name); err != nil {
		return nil, fmt.Errorf("tcprocks: listen: Config.Name: %w", err)
	}
	ctl, err := control.Listen(pc, &control.ServerConfig{Key: l.controlKey, Logger: c.Logger})
	if err != nil {
		return nil, fmt.Errorf("tcprocks: control server: %w", err)
	}
	l.ctl = ctl
	l.ctx, l.cancel = context.WithCancel(context.Background())
	ecfg := c.edpConfig(edp.Enhancement{Name: enhancementName, Version: enhancementVersion, Hello: l.hello})
	// rockctl/1: control channels over TCP for clients whose UDP is blocked.
	ecfg.Enhancements = append(ecfg.Enhancements, ctl.TCPEnhancement())
	l.el = edp.NewListener(inner, ecfg)
	l.wg.Go(l.acceptLoop)
	l.wg.Go(l.controlLoop)
	return l, nil
}

// Addr returns the TCP address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Accept waits for the next connection: always a *Conn, a rock or (from an ordinary client)
// plain TCP.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.AcceptConn()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// AcceptConn is Accept returning the *Conn type.
func (l *Listener) AcceptConn() (*Conn, error) {
	select {
	case c := <-l.queue:
		return c, nil
	case <-l.closed:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
}

// Close stops accepting. Rocks already accepted keep the port open until they close.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.isClosed {
		l.mu.Unlock()
		return &net.OpError{Op: "close", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
	l.isClosed = true
	close(l.closed)
	idle := len(l.rocks) == 0
	l.mu.Unlock()
	// Connections queued but never accepted.
	for {
		select {
		case c := <-l.queue:
			c.Close()
			continue
		default:
		}
		break
	}
	if idle {
		l.shutdown()
	}
	return nil
}

// shutdown closes the sockets and waits for the listener's goroutines.
func (l *Listener) shutdown() {
	l.shutOnce.Do(func() {
		l.cancel()
		l.el.Close()
		l.ctl.Close()
		if l.ownPC {
			l.pc.Close()
		}
		go func() {
			l.wg.Wait()
			close(l.stopped)
		}()
	})
}

// remove forgets a finished rock.
func (l *Listener) remove(c *Conn) {
	l.mu.Lock()
	if l.rocks[c.id] == c {
		delete(l.rocks, c.id)
	}
	last := l.isClosed && len(l.rocks) == 0
	l.mu.Unlock()
	if last {
		// Not inline: remove may run in one of the control server's callbacks.
		go l.shutdown()
	}
}

func (l *Listener) lookup(id [idLen]byte) *Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rocks[id]
}

func (l *Listener) controlKey(id control.ID) ([]byte, bool) {
	c := l.lookup(id)
	if c == nil {
		return nil, false
	}
	return c.keys.control, true
}

// hello is the server side of the rocks/1 EDP Hello: it answers INIT with a new connection ID
// and keys, and RESUME with a challenge (or a refusal for an unknown ID). It changes nothing:
// a resume takes effect only once the client's proof has been verified. At a limit it
// answers with a refusal.
func (l *Listener) hello(_ edp.Role, peer []byte) ([]byte, any, error) {
	if len(peer) == 0 {
		return nil, nil, fmt.Errorf("%w: empty hello", errMessage)
	}
	switch peer[0] {
	case msgInit:
		m, _, err := parseInit(peer)
		if err != nil {
			return nil, nil, err
		}
		if reason := l.initRefusal(); reason != 0 {
			l.cfg.Logger.Warn("tcprocks: refused a new connection", "reason", refuseText(reason))
			return appendRefuse(nil, reason), nil, nil
		}
		if l.busy() {
			l.cfg.Logger.Warn("tcprocks: refused a new connection", "reason", refuseText(refuseBusy))
			return appendRefuse(nil, refuseBusy), nil, nil
		}
		priv, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		st := &initState{local: localLimits(), peer: m.Limits, peerPSK: m.Flags&flagPSK != 0, peerName: m.Name}
		randomBytes(st.id[:])
		pub := priv.PublicKey().Bytes()
		if st.keys, err = deriveKeys(priv, m.Public[:], m.Public[:], pub, st.id, l.cfg.PSK); err != nil {
			return nil, nil, err
		}
		st.pubs = [2][]byte{m.Public[:], pub}
		ok := initOKMsg{ID: st.id, Limits: st.local, Name: l.cfg.Name,
			Confirm: serverConfirm(st.keys.resume, st.id, m.Public[:], pub)}
		copy(ok.Public[:], pub)
		if len(l.cfg.PSK) > 0 {
			ok.Flags |= flagPSK
		}
		return appendInitOK(nil, ok), st, nil
	case msgResume:
		m, _, err := parseResume(peer)
		if err != nil {
			return nil, nil, err
		}
		rock := l.lookup(m.ID)
		if rock == nil {
			return appendRefuse(nil, refuseUnknown), &resumeState{req: m}, nil
		}
		if !l.allowResume(m.ID) {
			l.cfg.Logger.Debug("tcprocks: refused a resume attempt", "id", fmt.Sprintf("%x", m.ID), "reason", refuseText(refuseRate))
			return appendRefuse(nil, refuseRate), &resumeState{req: m}, nil
		}
		if l.busy() {
			l.cfg.Logger.Warn("tcprocks: refused a resume attempt", "reason", refuseText(refuseBusy))
			return appendRefuse(nil, refuseBusy), &resumeState{req: m}, nil
		}
		st := &resumeState{rock: rock, req: m}
		randomBytes(st.ns[:])
		return appendChallenge(nil, challengeMsg{Nonce: st.ns, Proof: serverProof(rock.keys.resume, m.ID, m.Nonce, st.ns)}), st, nil
	}
	return nil, nil, fmt.Errorf("%w: hello type %#x", errMessage, peer[0])
}

func (l *Listener) acceptLoop() {
	for {
		ec, err := l.el.AcceptConn()
		if err != nil {
			if l.ctx.Err() == nil {
				l.cfg.Logger.Warn("tcprocks: accept", "err", err)
			}
			return
		}
		select {
		case l.sem <- struct{}{}:
		case <-l.ctx.Done():
			ec.Close()
			return
		}
		l.wg.Go(func() {
			defer func() { <-l.sem }()
			l.serve(ec)
		})
	}
}

// serve finishes setting up one accepted connection.
func (l *Listener) serve(ec *edp.Conn) {
	if l.ctl.ServeTCP(ec) {
		return // a control channel over TCP: controlLoop gets it from the control server
	}
	a := findRocks(ec.Result().Agreed)
	if a == nil {
		if l.cfg.RequireEnhanced || len(l.cfg.PSK) > 0 {
			l.cfg.Logger.Warn("tcprocks: refused an ordinary TCP client (this listener takes rocks only)", "client", ec.RemoteAddr())
			ec.Close()
			return
		}
		l.deliver(&Conn{plain: ec, cfg: l.cfg})
		return
	}
	switch st := a.State.(type) {
	case *initState:
		l.pending.Add(1)
		c, err := l.finishInit(ec, st)
		l.pending.Add(-1)
		if err != nil {
			level := slog.LevelDebug
			if errors.Is(err, ErrAuth) {
				level = slog.LevelWarn
			}
			l.cfg.Logger.Log(l.ctx, level, "tcprocks: init failed", "client", ec.RemoteAddr(), "err", err)
			ec.Close()
			return
		}
		l.deliver(c)
	case *resumeState:
		if st.rock == nil {
			ec.Close()
			return
		}
		l.pending.Add(1)
		err := l.resume(ec, st)
		l.pending.Add(-1)
		if err != nil {
			l.cfg.Logger.Debug("tcprocks: resume", "id", fmt.Sprintf("%x", st.req.ID), "err", err)
			ec.Close()
		}
	default:
		ec.Close()
	}
}

// finishInit completes the server side of an initialisation: the pre-shared key check and
// CONFIRM, the Authenticator; then it registers and starts the rock.
func (l *Listener) finishInit(ec *edp.Conn, st *initState) (*Conn, error) {
	mine := len(l.cfg.PSK) > 0
	switch {
	case mine && !st.peerPSK:
		return nil, fmt.Errorf("%w: this end has one, the client has none", ErrPSKMismatch)
	case !mine && st.peerPSK:
		return nil, fmt.Errorf("%w: the client has one, this end has none", ErrPSKMismatch)
	case mine:
		_ = ec.SetReadDeadline(time.Now().Add(l.cfg.HandshakeTimeout))
		var b [confirmLen]byte
		if _, err := io.ReadFull(ec, b[:]); err != nil {
			return nil, fmt.Errorf("tcprocks: reading the client's key confirmation: %w", err)
		}
		_ = ec.SetReadDeadline(time.Time{})
		got, _, err := parseConfirm(b[:])
		if err != nil {
			return nil, err
		}
		want := clientConfirm(st.keys.resume, st.id, st.pubs[0], st.pubs[1])
		if !hmac.Equal(got[:], want[:]) {
			return nil, fmt.Errorf("%w: the client's key confirmation is wrong", ErrPSKMismatch)
		}
	}
	if l.cfg.Authenticator != nil {
		info := callbacks.AuthInfo{Role: callbacks.Server, ID: st.id, Binding: binding(st.keys.resume, st.id, st.pubs[0], st.pubs[1])}
		if err := authenticate(l.ctx, l.cfg, l.cfg.HandshakeTimeout, ec, info); err != nil {
			return nil, err
		}
	}
	c := newConn(l.cfg, rockParams{role: callbacks.Server, id: st.id, keys: st.keys, local: st.local, peer: st.peer, conn: ec, peerName: st.peerName})
	c.lst = l
	l.mu.Lock()
	if l.isClosed || l.rocks[st.id] != nil {
		l.mu.Unlock()
		return nil, errors.New("tcprocks: listener closed")
	}
	l.rocks[st.id] = c
	l.mu.Unlock()
	c.start()
	return c, nil
}

// deliver queues c for Accept.
func (l *Listener) deliver(c *Conn) {
	select {
	case l.queue <- c:
	case <-l.closed:
		c.Close()
	}
}

// resume verifies the client's proof and hands the connection to the suspended rock.
func (l *Listener) resume(ec *edp.Conn, st *resumeState) error {
	c := st.rock
	_ = ec.SetDeadline(time.Now().Add(l.cfg.HandshakeTimeout))
	var pb [proofLen]byte
	if _, err := io.ReadFull(ec, pb[:]); err != nil {
		return err
	}
	got, _, err := parseProof(pb[:])
	if err != nil {
		return err
	}
	want := clientProof(c.keys.resume, c.id, st.req.Nonce, st.ns)
	if !hmac.Equal(got[:], want[:]) {
		return fmt.Errorf("%w: client proof", ErrAuth)
	}
	if l.cfg.Authenticator != nil {
		info := callbacks.AuthInfo{Role: callbacks.Server, Resume: true, ID: c.id, Binding: binding(c.keys.resume, c.id, st.req.Nonce[:], st.ns[:])}
		if err := authenticate(l.ctx, l.cfg, l.cfg.HandshakeTimeout, ec, info); err != nil {
			return err
		}
	}
	c.resumeMu.Lock()
	defer c.resumeMu.Unlock()
	c.mu.Lock()
	if c.finished {
		c.unlock()
		return net.ErrClosed
	}
	// The client is back, so whatever we still think is our connection is dead.
	c.suspend(errPeerReconnect)
	for c.readers > 0 && !c.finished {
		c.wait(time.Time{})
	}
	c.peerClosed(st.req.Fin, st.req.FinAt)
	acc := acceptMsg{Received: c.received, Fin: c.localFin, FinAt: c.finAt, AckFin: c.canAckPeerFin()}
	c.unlock()
	if _, err := ec.Write(appendAccept(nil, acc)); err != nil {
		return err
	}
	_ = ec.SetDeadline(time.Time{})
	c.resumed(ec, resumeInfo{peerReceived: st.req.Received, peerFin: st.req.Fin, peerFinAt: st.req.FinAt, peerAckedFin: st.req.AckFin, weAckedFin: acc.AckFin})
	return nil
}

// controlLoop accepts control channels and attaches each to its rock.
func (l *Listener) controlLoop() {
	for {
		ch, err := l.ctl.Accept(l.ctx)
		if err != nil {
			return
		}
		c := l.lookup(ch.ID())
		if c == nil {
			ch.Close()
			continue
		}
		c.attachChannel(ch)
	}
}
