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
	"slices"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
)

// EDP identity of rocks.
const (
	enhancementName    = "rocks"
	enhancementVersion = 1
)

func findRocks(agreed []edp.Agreed) *edp.Agreed {
	for i := range agreed {
		if agreed[i].Name == enhancementName && agreed[i].Version == enhancementVersion {
			return &agreed[i]
		}
	}
	return nil
}

// Dial connects to addr ("tcp", "tcp4" or "tcp6") and returns a rock, or a plain-TCP Conn
// (Enhanced() == false) if the server does not speak rocks/1 (an error instead when
// cfg.RequireEnhanced is set). ctx bounds the connection setup only. The returned net.Conn is
// never a typed nil: on error it is nil.
func Dial(ctx context.Context, network, addr string, cfg *Config) (*Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("tcprocks: dial %s: unsupported network %q", addr, network)
	}
	c := cfg.withDefaults()
	if err := checkName(c.Name); err != nil {
		return nil, fmt.Errorf("tcprocks: dial %s: Config.Name: %w", addr, err)
	}
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tcprocks: dial %s: %w", addr, err)
	}
	m := initMsg{Limits: localLimits(), Name: c.Name}
	copy(m.Public[:], priv.PublicKey().Bytes())
	if len(c.PSK) > 0 {
		m.Flags |= flagPSK
	}
	hello := appendInit(nil, m)
	ecfg := c.edpConfig(edp.Enhancement{
		Name:    enhancementName,
		Version: enhancementVersion,
		Hello: func(edp.Role, []byte) ([]byte, any, error) {
			return hello, nil, nil
		},
	})
	ecfg.Cache = c.ProbeCache
	ec, err := (&edp.Dialer{NetDialer: c.NetDialer, Config: ecfg}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("tcprocks: dial %s: %w", addr, err)
	}
	res := ec.Result()
	a := findRocks(res.Agreed)
	if a == nil {
		if c.RequireEnhanced {
			ec.Close()
			return nil, fmt.Errorf("%w (%s: %v)", ErrNotEnhanced, addr, res.Reason)
		}
		return &Conn{plain: ec, cfg: c}, nil
	}
	if reason, _, err := parseRefuse(a.Peer); err == nil {
		ec.Close()
		return nil, fmt.Errorf("%w (%s: %s)", ErrLimit, addr, refuseText(reason))
	}
	ok, _, err := parseInitOK(a.Peer)
	if err != nil {
		ec.Close()
		return nil, fmt.Errorf("tcprocks: dial %s: %w", addr, err)
	}
	k, err := deriveKeys(priv, ok.Public[:], m.Public[:], ok.Public[:], ok.ID, c.PSK)
	if err == nil {
		err = confirmInit(ctx, ec, c, k, m, ok)
	}
	if err != nil {
		ec.Close()
		return nil, fmt.Errorf("tcprocks: dial %s: %w", addr, err)
	}
	if c.Authenticator != nil {
		info := callbacks.AuthInfo{Role: callbacks.Client, ID: ok.ID, Binding: binding(k.resume, ok.ID, m.Public[:], ok.Public[:])}
		if err := authenticate(ctx, c, c.ResumeTimeout, ec, info); err != nil {
			ec.Close()
			return nil, err
		}
	}
	rc := newConn(c, rockParams{role: callbacks.Client, id: ok.ID, keys: k, local: m.Limits, peer: ok.Limits, conn: ec, peerName: ok.Name})
	rc.dialed, rc.netw, rc.ann = addr, network, res.Announcement
	rc.start()
	return rc, nil
}

// confirmInit (client) checks the server's key confirmation and the pre-shared keys of both
// ends, and sends CONFIRM when both have one (before it checks, so that a server with another
// key sees the mismatch too).
func confirmInit(ctx context.Context, conn net.Conn, cfg *Config, k keys, m initMsg, ok initOKMsg) error {
	mine, theirs := len(cfg.PSK) > 0, ok.Flags&flagPSK != 0
	switch {
	case mine && !theirs:
		return fmt.Errorf("%w: this end has one, the server has none", ErrPSKMismatch)
	case !mine && theirs:
		return fmt.Errorf("%w: the server requires one, this end has none", ErrPSKMismatch)
	case mine:
		if d, ok := ctx.Deadline(); ok {
			_ = conn.SetWriteDeadline(d)
			defer conn.SetWriteDeadline(time.Time{})
		}
		if _, err := conn.Write(appendConfirm(nil, clientConfirm(k.resume, ok.ID, m.Public[:], ok.Public[:]))); err != nil {
			return err
		}
	}
	want := serverConfirm(k.resume, ok.ID, m.Public[:], ok.Public[:])
	if !hmac.Equal(want[:], ok.Confirm[:]) {
		if mine {
			return fmt.Errorf("%w: the server's key confirmation is wrong", ErrPSKMismatch)
		}
		return fmt.Errorf("%w: the server's key confirmation is wrong", ErrAuth)
	}
	return nil
}

// start starts the goroutines of a new connected rock. Nothing else may use it yet.
func (c *Conn) start() {
	c.watchData()
	c.watchNetwork()
	c.mu.Lock()
	c.dialControl()
	c.unlock()
}

// authenticate runs the application's Authenticator on conn within timeout.
func authenticate(ctx context.Context, cfg *Config, timeout time.Duration, conn net.Conn, info callbacks.AuthInfo) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
		defer conn.SetDeadline(time.Time{})
	}
	if err := cfg.Authenticator.Authenticate(ctx, conn, info); err != nil {
		return fmt.Errorf("%w: %w", ErrAuth, err)
	}
	return nil
}

// reconnectLoop (dialing side) runs while the rock is suspended: it tries the last known
// address at once, then alternates, the dialed address and the locator, with backoff.
func (c *Conn) reconnectLoop() {
	attempt := 0
	var refusedSince time.Time
	// refused: each target's last answer (a network failure is no answer): true = "not
	// here", false = it has the rock or is another server.
	refused := make(map[string]bool)
	for round := 0; ; round++ {
		c.mu.Lock()
		if c.state != Suspended || c.finished {
			c.reconnectOn = false
			c.unlock()
			return
		}
		if c.resetBackoff {
			c.resetBackoff = false
			round = 0
		}
		targets := c.targets()
		since, p := c.suspendedAt, c.policy
		c.unlock()
		targets = appendNew(targets, c.locate(c.ctx)...)
		// Race the targets (raceConnect); a target whose connect failed had no answer this
		// round, and the one that connected gave its answer: try the others again.
		for pending := slices.Clone(targets); len(pending) > 0; {
			c.mu.Lock()
			if c.state != Suspended || c.finished {
				c.reconnectOn = false
				c.unlock()
				return
			}
			c.unlock()
			t, failed, err := c.tryResume(pending, &attempt)
			if err == nil {
				break // the loop's next check sees the new state
			}
			pending = slices.DeleteFunc(pending, func(x string) bool { return x == t || slices.Contains(failed, x) })
			if t == "" {
				// No target connected.
				c.cfg.Logger.Debug("tcprocks: resume attempt", "targets", targets, "err", err)
				break
			}
			c.cfg.Logger.Debug("tcprocks: resume attempt", "target", t, "err", err)
			if !errors.Is(err, errNoAnswer) {
				refused[t] = errors.Is(err, errRefused)
			}
			if !refused[t] {
				continue
			}
			c.mu.Lock()
			if c.peerFinAcked || c.closedBothWays() {
				// The peer closed, we acknowledged it (or closed too), and it has finished.
				c.peerGone = true
				c.finish(nil)
			}
			c.unlock()
		}
		// Every target's latest real answer (a failed connect is none) was "not here".
		allRefused := !slices.ContainsFunc(targets, func(t string) bool { return !refused[t] })
		if allRefused {
			if refusedSince.IsZero() {
				refusedSince = time.Now()
			} else if time.Since(refusedSince) >= p.RefusalGrace {
				c.mu.Lock()
				c.finish(&Error{Kind: ErrPeerLost, Detail: "every address refused the connection ID for " + time.Since(refusedSince).Round(time.Millisecond).String()})
				c.reconnectOn = false
				c.unlock()
				return
			}
		} else {
			refusedSince = time.Time{}
		}
		c.mu.Lock()
		resumed := c.state != Suspended || c.finished
		c.unlock()
		if resumed {
			continue
		}
		t := time.NewTimer(p.Backoff(round+1, time.Since(since)))
		select {
		case <-t.C:
		case <-c.kick:
			t.Stop()
		case <-c.ctx.Done():
			t.Stop()
		}
	}
}

// locate asks the Locator (dialing side; none: nil) where the peer is now.
func (c *Conn) locate(ctx context.Context) []string {
	loc := c.cfg.Locator
	if loc == nil {
		return nil
	}
	c.mu.Lock()
	q := callbacks.Query{ID: c.id, Dialed: c.dialed, Name: c.peerName}
	if c.raddr != nil {
		q.Last = c.raddr.String()
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ResumeTimeout)
	defer cancel()
	found, err := loc.Locate(ctx, q)
	if err != nil {
		c.cfg.Logger.Debug("tcprocks: locator", "err", err)
	}
	return found
}

// targets returns the addresses to try, in order, without duplicates. Under mu.
func (c *Conn) targets() []string {
	t := []string{}
	if c.raddr != nil {
		t = append(t, c.raddr.String())
	}
	t = appendNew(t, c.alternates...)
	return appendNew(t, c.dialed)
}

func appendNew(list []string, add ...string) []string {
outer:
	for _, a := range add {
		if a == "" {
			continue
		}
		for _, x := range list {
			if x == a {
				continue outer
			}
		}
		list = append(list, a)
	}
	return list
}

// raceStagger is how long a resume attempt waits for a target's connect before it starts
// connecting to the next one as well (Happy Eyeballs, RFC 8305, uses the same 250 ms): a
// dead last-known address — the peer moved — costs a quarter of a second, not a connect
// timeout.
const raceStagger = 250 * time.Millisecond

// raceRefresh is how often a resume attempt whose connects all hang asks the Locator again:
// the peer may have registered its new address since the attempt began.
const raceRefresh = time.Second

// raceRedial is how often a resume attempt sends a fresh SYN to a target whose connect
// hangs: after a silent outage (packets dropped, no network event) the old connect would wait
// for the kernel's SYN retransmission (1 s, 3 s, 7 s after it began), so a new connect,
// whose SYN leaves at once, finds the path sooner. At most raceMaxPending connects per target
// are kept; the oldest gives way.
const (
	raceRedial     = 400 * time.Millisecond
	raceMaxPending = 2
)

// raceConnect connects to the first of targets that accepts: it starts with targets[0] and
// starts the next one every raceStagger while none has connected, or at once when one fails.
// Once every target has been started and none has connected, it re-dials the targets whose
// connects hang every raceRedial and asks more (if not nil) for further targets every
// raceRefresh, racing those too. It returns the connection and its target, closing the
// losers, or, when none connected, the targets whose connect failed and their errors.
// started is called (on this goroutine) as each connect begins.
func (c *Conn) raceConnect(ctx context.Context, network string, targets []string, started func(string), more func(context.Context) []string) (conn net.Conn, won string, failed []string, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nd := c.cfg.NetDialer
	if nd == nil {
		nd = &net.Dialer{}
	}
	type result struct {
		id     int
		conn   net.Conn
		target string
		err    error
	}
	type dial struct {
		id     int
		cancel context.CancelFunc
		at     time.Time
	}
	targets = slices.Clone(targets)
	results := make(chan result, 8)
	pending := make(map[string][]dial) // the running connects of each target, oldest first
	given := make(map[int]bool)        // connects cancelled to make room: not an answer
	next, running, ids := 0, 0, 0
	dialTarget := func(t string) {
		ids++
		id := ids
		cctx, ccancel := context.WithCancel(ctx)
		if ds := pending[t]; len(ds) >= raceMaxPending {
			ds[0].cancel()
			given[ds[0].id] = true
			pending[t] = ds[1:]
		}
		pending[t] = append(pending[t], dial{id, ccancel, time.Now()})
		running++
		started(t)
		go func() {
			conn, err := nd.DialContext(cctx, network, t)
			results <- result{id, conn, t, err}
		}()
	}
	start := func() {
		next++
		dialTarget(targets[next-1])
	}
	start()
	timer := time.NewTimer(raceStagger)
	defer timer.Stop()
	var found chan []string // a Locator query in flight
	var located time.Time   // when the last one began
	var errs []error
	for running > 0 {
		select {
		case r := <-results:
			running--
			pending[r.target] = slices.DeleteFunc(pending[r.target], func(d dial) bool {
				if d.id == r.id {
					d.cancel()
					return true
				}
				return false
			})
			if r.err == nil {
				cancel()
				for range running { // the losers return at once: their context is cancelled
					if l := <-results; l.conn != nil {
						l.conn.Close()
					}
				}
				return r.conn, r.target, failed, nil
			}
			if given[r.id] {
				delete(given, r.id)
				continue
			}
			if len(pending[r.target]) == 0 {
				failed = append(failed, r.target)
			}
			errs = append(errs, fmt.Errorf("%s: %w", r.target, r.err))
			if next < len(targets) {
				start()
				timer.Reset(raceStagger)
			}
		case <-timer.C:
			if ctx.Err() != nil {
				continue // the attempt is over: the connects are returning
			}
			if next < len(targets) {
				start()
				timer.Reset(raceStagger)
				continue
			}
			for _, t := range targets {
				if ds := pending[t]; len(ds) > 0 && time.Since(ds[len(ds)-1].at) >= raceRedial {
					dialTarget(t)
				}
			}
			if more != nil && found == nil && time.Since(located) >= raceRefresh {
				found, located = make(chan []string, 1), time.Now()
				go func() { found <- more(ctx) }()
			}
			timer.Reset(raceRedial)
		case addrs := <-found:
			found = nil
			targets = appendNew(targets, addrs...)
			if next < len(targets) {
				start()
				timer.Reset(raceStagger)
			}
		}
	}
	return nil, "", failed, errors.Join(errs...)
}

// tryResume makes one reconnection attempt: it races the connects to targets (raceConnect)
// and resumes over the first connection made. won is the target that connected ("" if
// none did), failed the targets whose connect failed; *attempt counts the connects begun.
func (c *Conn) tryResume(targets []string, attempt *int) (won string, failed []string, err error) {
	c.resumeMu.Lock()
	defer c.resumeMu.Unlock()
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ResumeTimeout)
	defer cancel()

	// The old connection is closed; wait until no reader is left in it, so that the count
	// we send is final.
	c.mu.Lock()
	for c.readers > 0 && !c.finished {
		c.wait(time.Time{})
	}
	if c.state != Suspended || c.finished {
		c.unlock()
		return "", nil, nil
	}
	req := resumeMsg{ID: c.id, Received: c.received, Fin: c.localFin, FinAt: c.finAt, AckFin: c.canAckPeerFin()}
	c.unlock()
	randomBytes(req.Nonce[:])
	hello := appendResume(nil, req)

	ecfg := c.cfg.edpConfig(edp.Enhancement{
		Name:    enhancementName,
		Version: enhancementVersion,
		Hello: func(edp.Role, []byte) ([]byte, any, error) {
			return hello, nil, nil
		},
	})
	ecfg.Announcement = c.ann
	// A network change may abort the dial, connect and EDP handshake, once it has been under
	// way for staleDial (retryNow); the proof exchange after it is never aborted.
	dctx, dcancel := context.WithCancel(ctx)
	c.mu.Lock()
	c.dialCancel, c.dialStart = dcancel, time.Now()
	c.mu.Unlock()
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		conn, t, f, err := c.raceConnect(ctx, network, targets, func(t string) {
			*attempt++
			c.mu.Lock()
			c.emit(callbacks.Event{Kind: callbacks.Reconnecting, Attempt: *attempt, Target: t})
			c.unlock()
		}, c.locate)
		won, failed = t, append(failed, f...)
		return conn, err
	}
	ec, err := (&edp.Dialer{DialConn: dial, Config: ecfg}).DialContext(dctx, c.netw, targets[0])
	c.mu.Lock()
	c.dialCancel = nil
	c.mu.Unlock()
	dcancel()
	if errors.Is(err, edp.ErrStaleAnnouncement) {
		// Another listener (a restarted process) took the address: "not here".
		return won, failed, fmt.Errorf("%w: %w", errRefused, err)
	}
	if err != nil {
		return won, failed, fmt.Errorf("%w: %w", errNoAnswer, err)
	}
	ok := false
	defer func() {
		if !ok {
			ec.Close()
		}
	}()
	a := findRocks(ec.Result().Agreed)
	if a == nil {
		// Whoever listens there now does not speak rocks: "not here".
		return won, failed, fmt.Errorf("%w: %s is not a rocks server", errRefused, won)
	}
	if reason, _, err := parseRefuse(a.Peer); err == nil {
		if reason == refuseUnknown {
			return won, failed, errRefused
		}
		return won, failed, fmt.Errorf("%w (%s)", errBusy, refuseText(reason))
	}
	ch, _, err := parseChallenge(a.Peer)
	if err != nil {
		return won, failed, err
	}
	want := serverProof(c.keys.resume, c.id, req.Nonce, ch.Nonce)
	if !hmac.Equal(want[:], ch.Proof[:]) {
		return won, failed, fmt.Errorf("%w: server proof", ErrAuth)
	}
	if d, ok := ctx.Deadline(); ok {
		_ = ec.SetDeadline(d)
	}
	proof := clientProof(c.keys.resume, c.id, req.Nonce, ch.Nonce)
	if _, err := ec.Write(appendProof(nil, proof)); err != nil {
		return won, failed, err
	}
	if c.cfg.Authenticator != nil {
		info := callbacks.AuthInfo{Role: callbacks.Client, Resume: true, ID: c.id, Binding: binding(c.keys.resume, c.id, req.Nonce[:], ch.Nonce[:])}
		if err := authenticate(ctx, c.cfg, c.cfg.ResumeTimeout, ec, info); err != nil {
			return won, failed, err
		}
	}
	var ab [acceptLen]byte
	if _, err := io.ReadFull(ec, ab[:]); err != nil {
		return won, failed, fmt.Errorf("tcprocks: reading resume answer: %w", err)
	}
	acc, _, err := parseAccept(ab[:])
	if err != nil {
		return won, failed, err
	}
	_ = ec.SetDeadline(time.Time{})
	ok = true
	c.resumed(ec, resumeInfo{peerReceived: acc.Received, peerFin: acc.Fin, peerFinAt: acc.FinAt, peerAckedFin: acc.AckFin, weAckedFin: req.AckFin})
	return won, failed, nil
}

// resumed installs conn as the data connection of a suspended rock whose peer has consumed
// peerReceived bytes, then replays what the peer has not received.
// resumeInfo is what a resumption exchange told each side.
type resumeInfo struct {
	peerReceived uint64
	peerFin      finState
	peerFinAt    uint64
	peerAckedFin bool // the peer acknowledged our FIN(full)
	weAckedFin   bool // we acknowledged the peer's FIN(full)
}

func (c *Conn) resumed(conn net.Conn, ri resumeInfo) {
	peerReceived := ri.peerReceived
	c.mu.Lock()
	if c.finished {
		c.unlock()
		conn.Close()
		return
	}
	if peerReceived < c.acked || peerReceived > c.sent {
		c.finish(fmt.Errorf("%w: peer received %d bytes, but %d were acknowledged and %d sent", errProtocol, peerReceived, c.acked, c.sent))
		c.unlock()
		conn.Close()
		return
	}
	c.ack(peerReceived)
	c.written = peerReceived
	c.peerClosed(ri.peerFin, ri.peerFinAt)
	if ri.peerAckedFin && c.localFin == finFull {
		c.finAcked = true
	}
	if ri.weAckedFin {
		c.peerFinAcked = true
	}
	c.checkDone()
	if c.finished {
		c.unlock()
		conn.Close()
		return
	}
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	downtime := time.Since(c.suspendedAt)
	c.lastDowntime = downtime
	replay := int64(c.sent - peerReceived)
	c.install(conn)
	c.emit(callbacks.Event{Kind: callbacks.Resumed, Local: c.laddr, Remote: c.raddr, Downtime: downtime, Replayed: replay})
	c.cfg.Logger.Debug("tcprocks: resumed", "id", fmt.Sprintf("%x", c.id), "downtime", downtime, "replay", replay)
	c.dialControl()
	c.unlock()
	_, _ = c.flush(false)
}
