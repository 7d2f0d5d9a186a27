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
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tcprocks: dial %s: %w", addr, err)
	}
	var m initMsg
	copy(m.Public[:], priv.PublicKey().Bytes())
	m.Limits = localLimits()
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
	ok, _, err := parseInitOK(a.Peer)
	if err != nil {
		ec.Close()
		return nil, fmt.Errorf("tcprocks: dial %s: %w", addr, err)
	}
	k, err := deriveKeys(priv, ok.Public[:], m.Public[:], ok.Public[:], ok.ID, c.PSK)
	if err != nil {
		ec.Close()
		return nil, err
	}
	if c.Authenticator != nil {
		info := callbacks.AuthInfo{Role: callbacks.Client, ID: ok.ID, Binding: binding(k.resume, ok.ID, m.Public[:], ok.Public[:])}
		if err := authenticate(ctx, c, ec, info); err != nil {
			ec.Close()
			return nil, err
		}
	}
	rc := newConn(c, rockParams{role: callbacks.Client, id: ok.ID, keys: k, local: m.Limits, peer: ok.Limits, conn: ec})
	rc.dialed, rc.netw, rc.ann = addr, network, res.Announcement
	rc.wg.Go(rc.watchData)
	rc.mu.Lock()
	rc.dialControl()
	rc.unlock()
	return rc, nil
}

// authenticate runs the application's Authenticator on conn within the resume timeout.
func authenticate(ctx context.Context, cfg *Config, conn net.Conn, info callbacks.AuthInfo) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.ResumeTimeout)
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
	for round := 0; ; round++ {
		c.mu.Lock()
		if c.state != Suspended || c.finished {
			c.reconnectOn = false
			c.unlock()
			return
		}
		targets := c.targets()
		since, p := c.suspendedAt, c.policy
		c.unlock()
		if loc := c.cfg.Locator; loc != nil {
			ctx, cancel := context.WithTimeout(c.ctx, c.cfg.ResumeTimeout)
			found, err := loc.Locate(ctx, callbacks.Query{ID: c.id, Dialed: c.dialed, Last: targets[0]})
			cancel()
			if err != nil {
				c.cfg.Logger.Debug("tcprocks: locator", "err", err)
			}
			targets = appendNew(targets, found...)
		}
		allRefused := true
		for _, t := range targets {
			attempt++
			c.mu.Lock()
			if c.state != Suspended || c.finished {
				c.reconnectOn = false
				c.unlock()
				return
			}
			c.emit(callbacks.Event{Kind: callbacks.Reconnecting, Attempt: attempt, Target: t})
			c.unlock()
			err := c.tryResume(t)
			if err == nil {
				continue // the loop's next check sees the new state
			}
			c.cfg.Logger.Debug("tcprocks: resume attempt", "target", t, "err", err)
			if !errors.Is(err, errRefused) {
				allRefused = false
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

// tryResume makes one reconnection attempt to target.
func (c *Conn) tryResume(target string) error {
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
		return nil
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
	ec, err := (&edp.Dialer{NetDialer: c.cfg.NetDialer, Config: ecfg}).DialContext(ctx, c.netw, target)
	if errors.Is(err, edp.ErrStaleAnnouncement) {
		// Another listener (a restarted process) took the address: "not here".
		return fmt.Errorf("%w: %w", errRefused, err)
	}
	if err != nil {
		return err
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
		return fmt.Errorf("%w: %s is not a rocks server", errRefused, target)
	}
	if reason, _, err := parseRefuse(a.Peer); err == nil {
		return fmt.Errorf("%w (reason %d)", errRefused, reason)
	}
	ch, _, err := parseChallenge(a.Peer)
	if err != nil {
		return err
	}
	want := serverProof(c.keys.resume, c.id, req.Nonce, ch.Nonce)
	if !hmac.Equal(want[:], ch.Proof[:]) {
		return fmt.Errorf("%w: server proof", ErrAuth)
	}
	if d, ok := ctx.Deadline(); ok {
		_ = ec.SetDeadline(d)
	}
	proof := clientProof(c.keys.resume, c.id, req.Nonce, ch.Nonce)
	if _, err := ec.Write(appendProof(nil, proof)); err != nil {
		return err
	}
	if c.cfg.Authenticator != nil {
		info := callbacks.AuthInfo{Role: callbacks.Client, Resume: true, ID: c.id, Binding: binding(c.keys.resume, c.id, req.Nonce[:], ch.Nonce[:])}
		if err := authenticate(ctx, c.cfg, ec, info); err != nil {
			return err
		}
	}
	var ab [acceptLen]byte
	if _, err := io.ReadFull(ec, ab[:]); err != nil {
		return fmt.Errorf("tcprocks: reading resume answer: %w", err)
	}
	acc, _, err := parseAccept(ab[:])
	if err != nil {
		return err
	}
	_ = ec.SetDeadline(time.Time{})
	ok = true
	c.resumed(ec, resumeInfo{peerReceived: acc.Received, peerFin: acc.Fin, peerFinAt: acc.FinAt, peerAckedFin: acc.AckFin, weAckedFin: req.AckFin})
	return nil
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
	replay := int64(c.sent - peerReceived)
	c.install(conn)
	c.emit(callbacks.Event{Kind: callbacks.Resumed, Local: c.laddr, Remote: c.raddr, Downtime: downtime, Replayed: replay})
	c.cfg.Logger.Debug("tcprocks: resumed", "id", fmt.Sprintf("%x", c.id), "downtime", downtime, "replay", replay)
	c.dialControl()
	c.unlock()
	_, _ = c.flush(false)
}
