// Package relay is an in-process, fault-injecting TCP and UDP relay on
// loopback. It sits between a client and a target and can cut, reset,
// blackhole, delay or refuse the traffic on demand. The tcprocks tests use it
// to break paths under load, and `rockudp demo` uses it to break them live.
//
// A Relay listens on one TCP port and on the UDP port with the same number.
// Every accepted TCP connection is forwarded to the target over a new TCP
// connection (a "pair"); datagrams from each client address are forwarded to
// the target's host and port over UDP from a socket of their own (a "flow"),
// so replies find their way back to the right client.
//
// When no delay or blackhole is active, TCP bytes move with splice(2) on
// Linux; otherwise they are copied through pooled 64 KiB buffers. Switching
// mode never loses, duplicates or reorders a byte.
//
// A pair costs two goroutines and a UDP flow one; the relay itself runs
// three. Close stops them all.
//
// Once Blackhole, BlockUDP or SetDelay returns, it applies to every byte and
// datagram the relay reads from then on (bytes already handed to a socket
// still arrive). Cut and Reset act on the pairs open when they are called.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Config tunes a Relay. A nil *Config and the zero value of every field are
// valid; New fills defaults into a copy and never modifies the caller's struct.
type Config struct {
	// Listen is the TCP address to listen on. The UDP socket binds the same
	// host and port. Default "127.0.0.1:0": an ephemeral port whose UDP twin
	// is free (New retries with another port if it is taken).
	Listen string

	// DialTimeout bounds each TCP dial to the target. A failed dial resets the
	// client's connection. Default 5s.
	DialTimeout time.Duration

	// CutLinger is how long a pair whose connections were Cut keeps reading
	// (and discarding) from its peers, waiting for their FIN, before it
	// closes its sockets. Closing earlier could turn our FIN into a RST if a
	// peer keeps sending. Default 5s.
	CutLinger time.Duration

	// UDPIdleTimeout expires a UDP flow (and its upstream socket) after this
	// long with no datagram forwarded in either direction. Default 30s.
	UDPIdleTimeout time.Duration

	// MaxUDPFlows bounds the number of concurrent UDP flows; datagrams from
	// further client addresses are dropped. Default 1024.
	MaxUDPFlows int

	// DelayBuffer bounds, in bytes, the data held back by SetDelay: per
	// direction of each TCP pair (reading stops when it is full, so TCP
	// flow control pushes back) and for all UDP datagrams together (further
	// datagrams are dropped). It caps throughput at about DelayBuffer/delay.
	// Default 8 MiB.
	DelayBuffer int

	// DisableSplice makes TCP forwarding always copy through userspace
	// buffers, even where splice(2) is available. Default false.
	DisableSplice bool

	// Logger receives debug records about pairs, flows and faults.
	// Default nil: silent.
	Logger *slog.Logger
}

func (c *Config) withDefaults() Config {
	var d Config
	if c != nil {
		d = *c
	}
	if d.Listen == "" {
		d.Listen = "127.0.0.1:0"
	}
	if d.DialTimeout <= 0 {
		d.DialTimeout = 5 * time.Second
	}
	if d.CutLinger <= 0 {
		d.CutLinger = 5 * time.Second
	}
	if d.UDPIdleTimeout <= 0 {
		d.UDPIdleTimeout = 30 * time.Second
	}
	if d.MaxUDPFlows <= 0 {
		d.MaxUDPFlows = 1024
	}
	if d.DelayBuffer <= 0 {
		d.DelayBuffer = 8 << 20
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	return d
}

// Stats is a snapshot of a Relay's counters. Counters only grow; Active and
// UDPFlows are current values.
type Stats struct {
	Accepted  uint64 // TCP connections accepted, including refused ones
	Refused   uint64 // TCP connections reset at once because of Refuse
	DialFails uint64 // TCP connections reset because the target could not be dialed
	Active    int    // TCP pairs open now (including those still waiting to dial)
	BytesUp   uint64 // TCP bytes delivered to the target
	BytesDown uint64 // TCP bytes delivered to clients

	UDPFlows      int    // UDP flows open now
	DatagramsUp   uint64 // UDP datagrams delivered to the target
	DatagramsDown uint64 // UDP datagrams delivered to clients
	Dropped       uint64 // UDP datagrams dropped (blackhole, BlockUDP, full delay buffer, flow limit, send error)

	// Faults counts injected faults: each Cut and Reset, each switch on of
	// Blackhole, BlockUDP and Refuse, and each SetDelay to a new non-zero value.
	Faults uint64
}

// counters are the atomically updated parts of Stats.
type counters struct {
	accepted, refused, dialFails       atomic.Uint64
	bytesUp, bytesDown                 atomic.Uint64
	datagramsUp, datagramsDown, droppd atomic.Uint64
	faults                             atomic.Uint64
}

// state is the set of faults in force. A copy is handed out by snapshot;
// changed is closed (and replaced) on every change, so waiters can select on
// it.
type state struct {
	blackhole bool
	blockUDP  bool
	refuse    bool
	delay     time.Duration
	changed   chan struct{}
}

// Relay is a running fault-injecting relay. Its methods are safe for
// concurrent use. Fault methods called after Close do nothing.
type Relay struct {
	cfg    Config
	log    *slog.Logger
	ln     *net.TCPListener
	pc     *net.UDPConn
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the relay starts
	bufs   sync.Pool      // *[]byte of bufSize
	stats  counters

	mu        sync.Mutex // guards the fields below
	st        state
	target    string
	targetUDP *net.UDPAddr
	pairs     map[*pair]struct{}
	closed    bool

	udpMu sync.Mutex // guards flows
	flows map[netip.AddrPort]*flow

	q delayQueue // delayed UDP datagrams
}

// bufSize is the size of the copy buffers and of a UDP read buffer.
const bufSize = 64 << 10

// New starts a relay that forwards to target ("host:port", used for TCP and
// UDP alike). It listens on cfg.Listen (default 127.0.0.1:0) for TCP and on
// the same port number for UDP.
func New(target string, cfg *Config) (*Relay, error) {
	c := cfg.withDefaults()
	ua, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		return nil, fmt.Errorf("relay: target %q: %w", target, err)
	}
	ln, pc, err := listenTwins(c.Listen)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{
		cfg:       c,
		log:       c.Logger,
		ln:        ln,
		pc:        pc,
		ctx:       ctx,
		cancel:    cancel,
		st:        state{changed: make(chan struct{})},
		target:    target,
		targetUDP: ua,
		pairs:     make(map[*pair]struct{}),
		flows:     make(map[netip.AddrPort]*flow),
	}
	r.bufs.New = func() any { b := make([]byte, bufSize); return &b }
	r.q.init(c.DelayBuffer)
	r.wg.Add(3)
	go r.acceptLoop()
	go r.udpLoop()
	go r.delayLoop()
	r.log.Debug("relay: started", "addr", ln.Addr(), "target", target)
	return r, nil
}

// listenTwins opens a TCP listener and a UDP socket on the same port. With
// port 0 it retries when the UDP twin of the kernel's choice is taken.
func listenTwins(addr string) (*net.TCPListener, *net.UDPConn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("relay: listen address %q: %w", addr, err)
	}
	tries := 1
	if p, err := strconv.Atoi(port); err == nil && p == 0 {
		tries = 20
	}
	for i := 0; ; i++ {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("relay: %w", err)
		}
		ln := l.(*net.TCPListener)
		p := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err == nil {
			return ln, pc.(*net.UDPConn), nil
		}
		ln.Close()
		if i+1 >= tries || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, fmt.Errorf("relay: UDP twin of TCP port %d: %w", p, err)
		}
	}
}

// Addr returns the TCP listening address. The UDP socket has the same IP and
// port (see UDPAddr).
func (r *Relay) Addr() net.Addr { return r.ln.Addr() }

// UDPAddr returns the UDP listening address.
func (r *Relay) UDPAddr() net.Addr { return r.pc.LocalAddr() }

// Target returns the address new TCP connections and UDP flows go to.
func (r *Relay) Target() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.target
}

// SetTarget points new TCP connections and new UDP flows at addr, as if the
// server had moved. Existing pairs and flows keep their target.
func (r *Relay) SetTarget(addr string) error {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return fmt.Errorf("relay: target %q: %w", addr, err)
	}
	r.mu.Lock()
	r.target, r.targetUDP = addr, ua
	r.mu.Unlock()
	r.log.Debug("relay: target set", "target", addr)
	return nil
}

// snapshot returns the faults in force now.
func (r *Relay) snapshot() state {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}

// update applies fn to the state and wakes every waiter. If the TCP
// forwarding mode may have changed, it also interrupts every pair's reads so
// their pumps re-evaluate (see pump.run).
func (r *Relay) update(fn func(s *state) (fault, tcp bool)) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	fault, tcp := fn(&r.st)
	close(r.st.changed)
	r.st.changed = make(chan struct{})
	var ps []*pair
	if tcp {
		ps = r.pairList()
	}
	r.mu.Unlock()
	if fault {
		r.stats.faults.Add(1)
	}
	for _, p := range ps {
		p.interrupt()
	}
}

// pairList returns the current pairs; r.mu must be held.
func (r *Relay) pairList() []*pair {
	ps := make([]*pair, 0, len(r.pairs))
	for p := range r.pairs {
		ps = append(ps, p)
	}
	return ps
}

// Cut closes every current TCP pair gracefully: both peers receive a FIN, as
// if the relay had forwarded one from the other side, and bytes still in
// flight inside the relay are lost. It also drops every UDP flow, so the
// next datagram from a client leaves from a new upstream port (as after a NAT
// rebinding). New connections are not affected.
func (r *Relay) Cut() {
	if r.endAll(endCut) {
		r.dropFlows()
		r.stats.faults.Add(1)
		r.log.Debug("relay: cut")
	}
}

// Reset aborts every current TCP pair with a RST to both peers (SO_LINGER 0,
// then close). New connections are not affected.
func (r *Relay) Reset() {
	if r.endAll(endReset) {
		r.stats.faults.Add(1)
		r.log.Debug("relay: reset")
	}
}

// endAll ends every pair with k; false if the relay is closed.
func (r *Relay) endAll(k endKind) bool {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return false
	}
	ps := r.pairList()
	r.mu.Unlock()
	for _, p := range ps {
		p.end(k)
	}
	return true
}

// Blackhole starts (on) or stops silently dropping traffic both ways. While
// it is on, TCP bytes are held back, not delivered: the relay stops reading,
// so they wait in the relay and in the senders' socket buffers. New TCP
// connections are accepted but stall before the target is dialed. UDP
// datagrams are dropped.
//
// When it ends, held TCP bytes are delivered late, like a link coming back:
// whether a connection recovers is up to its endpoints (a rock treats the
// silence as a failure long before). Stalled new connections dial the target.
func (r *Relay) Blackhole(on bool) {
	r.toggle("blackhole", on, true, func(s *state) *bool { return &s.blackhole })
}

// toggle sets the switch field picks to on; a switch on is a fault. tcp
// says whether the switch changes how TCP pumps forward.
func (r *Relay) toggle(name string, on, tcp bool, field func(*state) *bool) {
	r.update(func(s *state) (bool, bool) {
		b := field(s)
		fault := on && !*b
		*b = on
		return fault, tcp
	})
	r.log.Debug("relay: "+name, "on", on)
}

// BlockUDP starts (on) or stops dropping every UDP datagram, both ways. TCP
// is not affected.
func (r *Relay) BlockUDP(on bool) {
	r.toggle("block UDP", on, false, func(s *state) *bool { return &s.blockUDP })
}

// SetDelay adds a one-way delay of d to every TCP chunk and UDP datagram
// read from then on, in both directions; order is kept. Zero removes it
// (data already held keeps its delivery time).
func (r *Relay) SetDelay(d time.Duration) {
	d = max(d, 0)
	r.update(func(s *state) (bool, bool) {
		f := d > 0 && d != s.delay
		s.delay = d
		return f, true
	})
	r.log.Debug("relay: delay", "delay", d)
}

// Refuse starts (on) or stops rejecting new TCP connections, as if the server
// were down: each new connection is reset (SO_LINGER 0, close) at once, so
// the client's connect, or else its first read or write, fails with
// ECONNRESET. Existing pairs and UDP are not affected.
func (r *Relay) Refuse(on bool) {
	r.toggle("refuse", on, false, func(s *state) *bool { return &s.refuse })
}

// Pairs returns the number of TCP pairs open now, including accepted
// connections still waiting (in a blackhole) to dial the target.
func (r *Relay) Pairs() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pairs)
}

// Stats returns a snapshot of the relay's counters.
func (r *Relay) Stats() Stats {
	s := Stats{
		Accepted:      r.stats.accepted.Load(),
		Refused:       r.stats.refused.Load(),
		DialFails:     r.stats.dialFails.Load(),
		BytesUp:       r.stats.bytesUp.Load(),
		BytesDown:     r.stats.bytesDown.Load(),
		DatagramsUp:   r.stats.datagramsUp.Load(),
		DatagramsDown: r.stats.datagramsDown.Load(),
		Dropped:       r.stats.droppd.Load(),
		Faults:        r.stats.faults.Load(),
	}
	s.Active = r.Pairs()
	r.udpMu.Lock()
	s.UDPFlows = len(r.flows)
	r.udpMu.Unlock()
	return s
}

// Close stops the relay: it closes the listeners, every pair (plainly, not
// with a RST unless data was unread) and every flow, and waits for all its
// goroutines. It is idempotent and always returns nil.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		r.wg.Wait()
		return nil
	}
	r.closed = true
	ps := r.pairList()
	r.mu.Unlock()

	for _, p := range ps {
		p.end(endClose)
	}
	r.cancel()
	r.ln.Close()
	r.pc.Close()
	r.dropFlows()
	r.wg.Wait()
	r.log.Debug("relay: closed")
	return nil
}
