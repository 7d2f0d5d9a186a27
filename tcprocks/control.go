package tcprocks

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/control"
)

// DefaultControlFallbackAfter is the default of Config.ControlFallbackAfter.
const DefaultControlFallbackAfter = time.Second

// controlChannel is what a rock needs from its control channel: *control.Channel, over QUIC
// or over its TCP fallback for networks that block UDP.
type controlChannel interface {
	Start(h control.Heartbeat)
	SetPolicy(interval time.Duration, misses int)
	Ack(consumed uint64) error
	Send(ctx context.Context, m []byte) error
	Close() error
}

var _ controlChannel = (*control.Channel)(nil)

// attachChannel makes ch the rock's control channel and starts its heartbeats.
func (c *Conn) attachChannel(ch controlChannel) {
	c.mu.Lock()
	if c.finished || c.state != Connected {
		c.unlock()
		ch.Close()
		return
	}
	old := c.ch
	c.ch = ch
	c.lastReport = c.received
	p := c.policy
	c.sendFin()
	c.maybeFinAck()
	c.broadcast()
	c.unlock()
	if old != nil {
		old.Close()
	}
	ch.Start(control.Heartbeat{
		Interval: p.HeartbeatInterval,
		Misses:   p.MissedHeartbeats,
		// The data connection is checked by watchData at every interval; this is called at
		// every heartbeat of every rock, so it only reads the count.
		Consumed: func() uint64 {
			c.mu.Lock()
			defer c.unlock()
			return c.received
		},
		OnHeartbeat: func(n uint64) {
			c.mu.Lock()
			if c.ch == ch {
				c.ack(n)
			}
			c.unlock()
		},
		OnMessage: func(m []byte) { c.onControlMessage(ch, m) },
		OnDead: func(err error) {
			c.mu.Lock()
			if c.ch == ch {
				c.cfg.Logger.Debug("tcprocks: control channel dead", "err", err)
				cause := errHeartbeat
				if errors.Is(err, control.ErrPeerClosed) {
					cause = errCtlClosed
				}
				c.suspend(cause)
			}
			c.unlock()
		},
	})
}

// onControlMessage handles a reliable control message from the peer.
func (c *Conn) onControlMessage(ch controlChannel, m []byte) {
	c.mu.Lock()
	defer c.unlock()
	if c.ch != ch || len(m) == 0 {
		return
	}
	switch m[0] {
	case msgFin:
		f, _, err := parseFinMsg(m)
		if err != nil {
			c.cfg.Logger.Debug("tcprocks: bad control message", "err", err)
			return
		}
		c.peerClosed(f.Fin, f.Count)
	case msgFinAck:
		n, _, err := parseFinAck(m)
		if err != nil {
			c.cfg.Logger.Debug("tcprocks: bad control message", "err", err)
			return
		}
		if c.localFin == finFull {
			c.ack(min(n, c.sent))
			c.finAcked = true
			c.checkDone()
		}
	default:
		c.cfg.Logger.Debug("tcprocks: unknown control message", "type", m[0])
	}
}

// peerClosed records the peer's close state (from FIN or a resumption exchange). Under mu.
func (c *Conn) peerClosed(f finState, at uint64) {
	if f == finNone || f < c.peerFin {
		return
	}
	if at < c.received || (c.peerFin != finNone && at != c.peerFinAt) {
		c.cfg.Logger.Debug("tcprocks: inconsistent FIN", "at", at, "received", c.received)
		return
	}
	c.peerFin, c.peerFinAt = f, at
	if c.received >= at {
		c.interruptReaders()
	}
	c.maybeAck()
	c.maybeFinAck()
	c.checkDone()
	c.broadcast()
}

// dialControl (dialing side) establishes the control channel in the background, retrying with
// backoff, until it is up or the rock suspends or finishes. Each attempt tries QUIC first for
// at most Config.ControlFallbackAfter, then falls back to TCP (for networks that drop UDP);
// every new attempt, and so every reconnection, tries QUIC again first. Under mu.
func (c *Conn) dialControl() {
	if c.role != callbacks.Client || c.finished || c.state != Connected {
		return
	}
	if c.chCancel != nil {
		c.chCancel()
	}
	ctx, cancel := context.WithCancel(c.ctx)
	c.chCancel = cancel
	raddr := c.raddr
	if _, ok := raddr.(*net.TCPAddr); !ok {
		return
	}
	c.wg.Go(func() {
		client, err := c.cfg.controlClient()
		if err != nil {
			c.cfg.Logger.Warn("tcprocks: no control client", "err", err)
			return
		}
		backoff := 100 * time.Millisecond
		for {
			ch, err := c.dialControlOnce(ctx, client, raddr)
			if err == nil {
				if ctx.Err() != nil {
					ch.Close()
					return
				}
				c.attachChannel(ch)
				return
			}
			c.cfg.Logger.Debug("tcprocks: control channel", "addr", raddr, "err", err)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, 30*time.Second)
		}
	})
}

// dialControlOnce makes one attempt at a control channel to the listener at raddr: QUIC on
// its UDP twin, and if that handshake does not complete in time (UDP blocked), rockctl/1 over
// a second TCP connection. A refusal over QUIC is final for this attempt.
func (c *Conn) dialControlOnce(ctx context.Context, client *control.Client, raddr net.Addr) (*control.Channel, error) {
	tcp := raddr.(*net.TCPAddr)
	udp := &net.UDPAddr{IP: tcp.IP, Port: tcp.Port, Zone: tcp.Zone}
	qctx, qcancel := context.WithTimeout(ctx, min(c.cfg.ControlFallbackAfter, c.cfg.ResumeTimeout))
	ch, err := client.Dial(qctx, udp, control.ID(c.id), c.keys.control)
	qcancel()
	if err == nil || ctx.Err() != nil || errors.Is(err, control.ErrRefused) || errors.Is(err, control.ErrBadProof) {
		return ch, err
	}
	c.cfg.Logger.Debug("tcprocks: control channel over QUIC failed, trying TCP", "addr", udp, "err", err)
	ecfg := c.cfg.edpConfig(edp.Enhancement{})
	ecfg.Enhancements = nil
	ecfg.Announcement = c.ann
	tctx, tcancel := context.WithTimeout(ctx, c.cfg.ResumeTimeout)
	defer tcancel()
	return client.DialTCP(tctx, &edp.Dialer{NetDialer: c.cfg.NetDialer, Config: ecfg}, c.netw, tcp.String(), control.ID(c.id), c.keys.control)
}

// ControlNetwork returns the transport of the rock's control channel: "udp" (QUIC), "tcp"
// (the fallback for networks that drop UDP), or "" while the rock has none (suspended,
// being set up, or a plain TCP connection).
func (c *Conn) ControlNetwork() string {
	if c.plain != nil {
		return ""
	}
	c.mu.Lock()
	defer c.unlock()
	if ch, ok := c.ch.(*control.Channel); ok {
		return ch.Network()
	}
	return ""
}
