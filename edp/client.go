package edp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Dialer dials enhanced connections. The zero value works: a zero net.Dialer and a
// nil Config (no enhancements, no cache).
type Dialer struct {
	NetDialer *net.Dialer // nil: a zero net.Dialer
	Config    *Config     // nil: defaults
	// DialConn, when set, makes every TCP connection in place of NetDialer: a caller that
	// chooses among several addresses itself (a suspended rock racing its candidate
	// addresses) dials them there. addr is the address given to DialContext. Default nil.
	DialConn func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Dial connects to addr with enhancement detection; see Dialer.DialContext.
func Dial(ctx context.Context, network, addr string, cfg *Config) (*Conn, error) {
	d := Dialer{Config: cfg}
	return d.DialContext(ctx, network, addr)
}

// DialContext connects to addr ("tcp", "tcp4" or "tcp6") and detects whether the
// server is enhanced: unless the cache or Config.Announcement already knows, it probes
// the server, then opens the connection it returns. Against an enhanced server it sends
// the announcement and its offer, reads the server's agreement and runs the agreed
// Init hooks; against an ordinary server it returns a fresh, untouched ordinary Conn
// whose Result says why. It returns an error if the server is unreachable or the
// enhanced handshake fails (*HandshakeError); a failed handshake invalidates the cache
// entry. When the server calls the announcement stale or does not answer with EDP at
// all, DialContext probes again and retries once (not with Config.Announcement). ctx
// bounds the whole Dial, not the connection's life.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (*Conn, error) {
	c, err := d.client(network, addr)
	if err != nil {
		return nil, err
	}
	return c.dial(ctx)
}

// Probe runs only the probe against addr and reports whether the server is enhanced,
// with its announcement and its list of enhancements. It ignores cfg.Cache for lookup
// but stores the result in it. An unreachable server is an error.
func Probe(ctx context.Context, network, addr string, cfg *Config) (Result, error) {
	d := Dialer{Config: cfg}
	c, err := d.client(network, addr)
	if err != nil {
		return Result{}, err
	}
	var st dialStats
	r, err := c.probe(ctx, &st)
	if err == nil {
		c.cfg.Cache.store(addr, r)
	}
	return r, err
}

type client struct {
	cfg           *Config
	dialConn      func(ctx context.Context, network, addr string) (net.Conn, error)
	network, addr string
	log           *slog.Logger
}

type dialStats struct{ connects, roundTrips int }

func (d *Dialer) client(network, addr string) (*client, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("edp: dial %s: unsupported network (want tcp, tcp4 or tcp6)", network)
	}
	cfg := d.Config.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dial := d.DialConn
	if dial == nil {
		nd := d.NetDialer
		if nd == nil {
			nd = &net.Dialer{}
		}
		dial = nd.DialContext
	}
	return &client{cfg: cfg, dialConn: dial, network: network, addr: addr, log: cfg.Logger}, nil
}

func (c *client) dial(ctx context.Context) (*Conn, error) {
	var st dialStats
	ann, offered, cached := c.cfg.Announcement, []ID(nil), c.cfg.Announcement != nil
	given := cached
	if !given {
		if e, ok := c.cfg.Cache.Lookup(c.addr); ok {
			if !e.Enhanced {
				return c.ordinary(ctx, Result{Reason: e.Reason, Cached: true}, &st)
			}
			ann, offered, cached = e.Announcement, e.Offered, true
		}
	}
	for attempt := 0; ; attempt++ {
		if ann == nil {
			res, err := c.probe(ctx, &st)
			if err != nil {
				return nil, err
			}
			c.cfg.Cache.store(c.addr, res)
			if !res.Enhanced {
				return c.ordinary(ctx, res, &st)
			}
			ann, offered, cached = res.Announcement, res.Offered, false
		}
		conn, err := c.handshake(ctx, ann, offered, cached, &st)
		if err == nil {
			return conn, nil
		}
		if given {
			return nil, err
		}
		c.cfg.Cache.Invalidate(c.addr)
		if attempt > 0 || !retryable(ctx, err) {
			return nil, err
		}
		c.log.Debug("edp: enhanced handshake failed, probing again", "addr", c.addr, "err", err)
		ann = nil
	}
}

// retryable reports whether a handshake failed in a way a fresh probe may cure: the
// server rejected the announcement as stale, or did not answer with an EDP message at
// all (it restarted or was replaced, or took the connection for an ordinary one).
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var ne *notEDPError
	return errors.Is(err, ErrStaleAnnouncement) || errors.As(err, &ne)
}

// notEDPError: the reply to an offer was not an EDP message.
type notEDPError struct{ err error }

func (e *notEDPError) Error() string {
	return "no EDP reply: " + strings.TrimPrefix(e.err.Error(), "edp: ")
}
func (e *notEDPError) Unwrap() error { return e.err }

// ordinary dials a fresh, untouched connection.
func (c *client) ordinary(ctx context.Context, r Result, st *dialStats) (*Conn, error) {
	conn, err := c.dialConn(ctx, c.network, c.addr)
	if err != nil {
		return nil, fmt.Errorf("edp: %w", err)
	}
	st.connects++
	return &Conn{conn: conn, raw: conn, result: r, connects: st.connects, roundTrips: st.roundTrips}, nil
}

// watch bounds I/O on conn by deadline and by ctx; stop undoes the ctx part.
func watch(ctx context.Context, conn net.Conn, deadline time.Time) (stop func() bool) {
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	return context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
}

// ctxErr returns ctx's error, wrapped, if ctx is done; else err.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("edp: %w", context.Cause(ctx))
	}
	return err
}

// probe runs the client probe (paper, section 3, step 1).
func (c *client) probe(ctx context.Context, st *dialStats) (Result, error) {
	start := time.Now()
	conn, err := c.dialConn(ctx, c.network, c.addr)
	if err != nil {
		if errors.Is(err, syscall.ECONNRESET) && ctx.Err() == nil {
			// Accepted, then reset before connect returned: a server, not enhanced.
			st.connects++
			return Result{Reason: ReasonReset}, nil
		}
		return Result{}, fmt.Errorf("edp: probe: %w", err)
	}
	defer conn.Close()
	st.connects++
	timeout := c.cfg.probeTimeout(time.Since(start))
	stop := watch(ctx, conn, time.Now().Add(timeout))
	defer stop()
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		return Result{}, fmt.Errorf("edp: probe: %T has no CloseWrite", conn)
	}
	st.roundTrips++
	var r Result
	if err := cw.CloseWrite(); err != nil {
		r.Reason = ReasonReset // the server reset the connection before the half-close
	} else {
		r, err = readProbeReply(conn)
		if err != nil {
			return Result{}, ctxErr(ctx, fmt.Errorf("edp: probe: %w", err))
		}
	}
	if err := ctx.Err(); err != nil {
		return Result{}, ctxErr(ctx, err)
	}
	c.log.Debug("edp: probe", "addr", c.addr, "enhanced", r.Enhanced, "reason", r.Reason, "timeout", timeout)
	return r, nil
}

// maxProbeReply is the most a probe reads: the announcement and a list message.
const maxProbeReply = AnnouncementLen + msgHeaderLen + 1 + MaxOffers*(1+MaxNameLen+1+2)

// readProbeReply reads the server's answer to the half-close until it is complete,
// mismatches the announcement format, or the connection ends.
func readProbeReply(r io.Reader) (Result, error) {
	buf := make([]byte, maxProbeReply)
	n := 0
	for {
		m, err := r.Read(buf[n:])
		n += m
		res, done := judgeProbeReply(buf[:n], err != nil)
		if done {
			return res, nil
		}
		if err != nil {
			switch {
			case n > 0:
				return Result{Reason: ReasonTruncated}, nil
			case errors.Is(err, io.EOF):
				return Result{Reason: ReasonClosed}, nil
			case isReset(err):
				return Result{Reason: ReasonReset}, nil
			case errors.Is(err, os.ErrDeadlineExceeded):
				return Result{Reason: ReasonTimeout}, nil
			}
			return Result{}, err
		}
	}
}

// judgeProbeReply decides on the bytes b of a probe reply read so far; ended says the
// connection gave no more. It is done when b is not an announcement, or holds a
// complete announcement and list, or holds an announcement and ended is set.
func judgeProbeReply(b []byte, ended bool) (Result, bool) {
	if !hasMagicPrefix(b) {
		return Result{Reason: ReasonData}, true
	}
	if len(b) < AnnouncementLen {
		return Result{}, false
	}
	r := Result{Enhanced: true, Announcement: append([]byte(nil), b[:AnnouncementLen]...)}
	m, _, err := parseMessage(b[AnnouncementLen:])
	switch {
	case err == nil && m.Type == msgList:
		for _, e := range m.Entries {
			r.Offered = append(r.Offered, e.ID)
		}
		return r, true
	case errors.Is(err, errShort) && !ended && len(b) < maxProbeReply:
		return Result{}, false
	}
	return r, true // no list, or one we do not understand: enhanced all the same
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ENOTCONN)
}

// handshake opens the enhanced connection (paper, section 3, steps 2-4): announcement
// and offer in one write, the server's agreement, then the Init hooks. cached says the
// announcement did not come from a probe in this Dial.
func (c *client) handshake(ctx context.Context, ann []byte, offered []ID, cached bool, st *dialStats) (*Conn, error) {
	fail := func(err error) error { return &HandshakeError{Addr: c.addr, Err: err} }
	// Build the whole first flight before connecting, so that it follows the connect
	// at once and the server's FirstByteWait never sees a gap.
	hellos := make([]Agreed, len(c.cfg.Enhancements))
	offer := message{Type: msgOffer}
	for i := range c.cfg.Enhancements {
		e := &c.cfg.Enhancements[i]
		hellos[i].ID = e.ID()
		if e.Hello != nil {
			p, s, err := e.Hello(RoleClient, nil)
			if err != nil {
				return nil, fail(fmt.Errorf("%s hello: %w", e.ID(), err))
			}
			hellos[i].Local, hellos[i].State = p, s
		}
		offer.Entries = append(offer.Entries, entry{ID: e.ID(), Params: hellos[i].Local})
	}
	flight, err := appendMessage(append(make([]byte, 0, AnnouncementLen+1024), ann...), offer)
	if err != nil {
		return nil, fail(err)
	}

	start := time.Now()
	conn, err := c.dialConn(ctx, c.network, c.addr)
	if err != nil {
		return nil, fmt.Errorf("edp: %w", err)
	}
	st.connects++
	deadline := start.Add(c.cfg.HandshakeTimeout)
	stop := watch(ctx, conn, deadline)
	result, wrapped, err := c.exchange(ctx, conn, flight, hellos, deadline, st)
	if !stop() || err != nil {
		conn.Close()
		if err == nil {
			err = context.Cause(ctx)
		}
		return nil, fail(ctxErr(ctx, err))
	}
	conn.SetDeadline(time.Time{})
	result.Enhanced, result.Offered, result.Announcement = true, slices.Clone(offered), bytes.Clone(ann)
	result.Cached = cached
	return &Conn{conn: wrapped, raw: conn, result: result, connects: st.connects, roundTrips: st.roundTrips}, nil
}

// exchange sends the first flight, reads the agreement and runs the Init hooks.
func (c *client) exchange(ctx context.Context, conn net.Conn, flight []byte, hellos []Agreed, deadline time.Time, st *dialStats) (Result, net.Conn, error) {
	if _, err := conn.Write(flight); err != nil {
		return Result{}, nil, &notEDPError{err}
	}
	st.roundTrips++
	m, err := readMessage(conn)
	if err != nil {
		return Result{}, nil, err
	}
	if m.Type == msgReject {
		return Result{}, nil, &RejectError{Code: m.Code, Text: m.Text}
	}
	if m.Type != msgAgree {
		return Result{}, nil, fmt.Errorf("%w: reply of type %d to an offer", ErrMalformed, m.Type)
	}
	var r Result
	next := 0 // agreed entries must follow the offer's order
	for _, e := range m.Entries {
		for next < len(hellos) && hellos[next].ID != e.ID {
			next++
		}
		if next == len(hellos) {
			return Result{}, nil, fmt.Errorf("%w: server agreed to %s, not offered or out of order", ErrMalformed, e.ID)
		}
		a := hellos[next]
		a.Peer = e.Params
		r.Agreed = append(r.Agreed, a)
		next++
	}
	ictx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	wrapped, err := runInits(ictx, conn, c.cfg.Enhancements, r.Agreed)
	return r, wrapped, err
}

// runInits runs the Init hooks of the agreed enhancements in order.
func runInits(ctx context.Context, conn net.Conn, enh []Enhancement, agreed []Agreed) (net.Conn, error) {
	for i := range agreed {
		a := &agreed[i]
		e := findEnhancement(enh, a.ID)
		if e == nil || e.Init == nil {
			continue
		}
		next, err := e.Init(ctx, conn, a)
		if err != nil {
			return nil, fmt.Errorf("%s init: %w", a.ID, err)
		}
		if next != nil {
			conn = next
		}
	}
	return conn, nil
}

func findEnhancement(enh []Enhancement, id ID) *Enhancement {
	for i := range enh {
		if enh[i].ID() == id {
			return &enh[i]
		}
	}
	return nil
}

// readMessage reads exactly one message from r: the header, then the body it
// announces (checked against the type's limit before allocating). An error before a
// valid header is a *notEDPError.
func readMessage(r io.Reader) (message, error) {
	var hdr [msgHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return message{}, err
		}
		return message{}, &notEDPError{err}
	}
	_, n, err := parseHeader(hdr[:])
	if err != nil {
		return message{}, &notEDPError{err}
	}
	b := make([]byte, msgHeaderLen+n)
	copy(b, hdr[:])
	if _, err := io.ReadFull(r, b[msgHeaderLen:]); err != nil {
		return message{}, err
	}
	m, _, err := parseMessage(b)
	return m, err
}
