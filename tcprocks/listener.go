package tcprocks

import (
	"context"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/control"
)

// Listener accepts rocks (and, from ordinary clients, plain TCP connections) on a TCP listener,
// and serves the rocks' control channels over QUIC on the UDP port with the same number.
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
}

var _ net.Listener = (*Listener)(nil)

// initState is the server's Hello state for a new rock.
type initState struct {
	id    [idLen]byte
	keys  keys
	local limits
	peer  limits
	pubs  [2][]byte
}

// resumeState is the server's Hello state for a resume request.
type resumeState struct {
	rock *Conn // nil: refused
	req  resumeMsg
	ns   [nonceLen]byte
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
		cfg:     c,
		inner:   inner,
		pc:      pc,
		ownPC:   ownPC,
		queue:   make(chan *Conn, 128),
		closed:  make(chan struct{}),
		stopped: make(chan struct{}),
		sem:     make(chan struct{}, 1024),
		rocks:   make(map[[idLen]byte]*Conn),
	}
	ctl, err := control.Listen(pc, &control.ServerConfig{Key: l.controlKey, Logger: c.Logger})
	if err != nil {
		return nil, fmt.Errorf("tcprocks: control server: %w", err)
	}
	l.ctl = ctl
	l.ctx, l.cancel = context.WithCancel(context.Background())
	ecfg := c.edpConfig(edp.Enhancement{Name: enhancementName, Version: enhancementVersion, Hello: l.hello})
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
// a resume takes effect only once the client's proof has been verified.
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
		l.mu.Lock()
		full := len(l.rocks) >= l.cfg.MaxRocks || l.isClosed
		l.mu.Unlock()
		if full {
			return nil, nil, errors.New("tcprocks: listener full or closed")
		}
		priv, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		st := &initState{local: localLimits(), peer: m.Limits}
		randomBytes(st.id[:])
		pub := priv.PublicKey().Bytes()
		if st.keys, err = deriveKeys(priv, m.Public[:], m.Public[:], pub, st.id, l.cfg.PSK); err != nil {
			return nil, nil, err
		}
		st.pubs = [2][]byte{m.Public[:], pub}
		ok := initOKMsg{ID: st.id, Limits: st.local}
		copy(ok.Public[:], pub)
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
	a := findRocks(ec.Result().Agreed)
	if a == nil {
		l.deliver(&Conn{plain: ec, cfg: l.cfg})
		return
	}
	switch st := a.State.(type) {
	case *initState:
		if l.cfg.Authenticator != nil {
			info := callbacks.AuthInfo{Role: callbacks.Server, ID: st.id, Binding: binding(st.keys.resume, st.id, st.pubs[0], st.pubs[1])}
			if err := authenticate(l.ctx, l.cfg, ec, info); err != nil {
				l.cfg.Logger.Debug("tcprocks: init", "err", err)
				ec.Close()
				return
			}
		}
		c := newConn(l.cfg, rockParams{role: callbacks.Server, id: st.id, keys: st.keys, local: st.local, peer: st.peer, conn: ec})
		c.lst = l
		l.mu.Lock()
		if l.isClosed || l.rocks[st.id] != nil {
			l.mu.Unlock()
			ec.Close()
			return
		}
		l.rocks[st.id] = c
		l.mu.Unlock()
		c.wg.Go(c.watchData)
		l.deliver(c)
	case *resumeState:
		if st.rock == nil {
			ec.Close()
			return
		}
		if err := l.resume(ec, st); err != nil {
			l.cfg.Logger.Debug("tcprocks: resume", "id", fmt.Sprintf("%x", st.req.ID), "err", err)
			ec.Close()
		}
	default:
		ec.Close()
	}
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
	_ = ec.SetDeadline(time.Now().Add(l.cfg.ResumeTimeout))
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
		if err := authenticate(l.ctx, l.cfg, ec, info); err != nil {
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
