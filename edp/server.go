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
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Listener wraps a net.Listener and classifies every accepted connection on its own
// goroutine: probes are answered and never returned, enhanced clients are negotiated
// with (Hello and Init hooks run there), and ordinary clients are returned with their
// first bytes intact. A slow or silent client never delays Accept for others.
type Listener struct {
	inner   net.Listener
	cfg     *Config
	log     *slog.Logger
	ann     []byte // the announcement
	reply   []byte // answer to a probe: announcement + list message
	cfgErr  error  // a bad Config: Accept returns it
	ready   chan accepted
	sem     chan struct{} // one token per pending connection (MaxPending)
	done    chan struct{} // closed by Close
	stopped chan struct{} // closed when the accept loop ends
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu      sync.Mutex
	pending map[net.Conn]struct{} // connections being classified; Close closes them
	loopErr error                 // why the accept loop ended
	closed  bool

	closeOnce sync.Once
	closeErr  error

	probes, enhanced, ordinary, failed atomic.Uint64
	npending                           atomic.Int64
}

type accepted struct {
	c   *Conn
	err error
}

// ListenerStats counts what a Listener has seen.
type ListenerStats struct {
	Probes   uint64 // probes answered
	Enhanced uint64 // enhanced connections classified
	Ordinary uint64 // ordinary connections classified
	Failed   uint64 // connections dropped: failed handshakes, stale announcements, resets
	Pending  int    // connections being classified or waiting for Accept now
}

var _ net.Listener = (*Listener)(nil)

// NewListener returns a Listener that classifies the connections of inner. If cfg is
// invalid (bad enhancement names, bad announcement), Accept returns the error.
func NewListener(inner net.Listener, cfg *Config) *Listener {
	c := cfg.withDefaults()
	l := &Listener{
		inner:   inner,
		cfg:     c,
		log:     c.Logger,
		ready:   make(chan accepted),
		sem:     make(chan struct{}, c.MaxPending),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
		pending: make(map[net.Conn]struct{}),
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	if err := c.validate(); err != nil {
		l.cfgErr = err
		l.loopErr = err
		close(l.stopped)
		return l
	}
	l.ann = bytes.Clone(c.Announcement)
	if l.ann == nil {
		l.ann = NewAnnouncement()
	}
	list := message{Type: msgList}
	for i := range c.Enhancements {
		list.Entries = append(list.Entries, entry{ID: c.Enhancements[i].ID()})
	}
	l.reply, _ = appendMessage(append([]byte(nil), l.ann...), list) // valid: checked above
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// Accept waits for the next connection that is not a probe. It is always an *Conn.
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
	case a := <-l.ready:
		return a.c, a.err
	case <-l.done:
		return nil, fmt.Errorf("edp: accept: %w", net.ErrClosed)
	case <-l.stopped:
		l.mu.Lock()
		defer l.mu.Unlock()
		return nil, l.loopErr
	}
}

// Addr returns the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Close closes the inner listener and every connection still being classified or
// waiting for Accept, and waits for the listener's goroutines. Connections already
// returned by Accept are the caller's. Close is idempotent.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		for c := range l.pending {
			c.Close()
		}
		l.mu.Unlock()
		close(l.done)
		l.cancel()
		l.closeErr = l.inner.Close()
		l.wg.Wait()
	})
	return l.closeErr
}

// Announcement returns the listener's announcement.
func (l *Listener) Announcement() []byte { return bytes.Clone(l.ann) }

// Stats returns the listener's counters.
func (l *Listener) Stats() ListenerStats {
	return ListenerStats{
		Probes:   l.probes.Load(),
		Enhanced: l.enhanced.Load(),
		Ordinary: l.ordinary.Load(),
		Failed:   l.failed.Load(),
		Pending:  int(l.npending.Load()),
	}
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			return
		}
		raw, err := l.inner.Accept()
		if err != nil {
			<-l.sem
			if !transient(err) || isClosed(l.done) {
				l.stop(fmt.Errorf("edp: accept: %w", err))
				return
			}
			// A transient error (EMFILE, a timeout): report it, back off, go on.
			select {
			case l.ready <- accepted{err: err}:
			case <-l.done:
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		if !l.track(raw) {
			raw.Close()
			<-l.sem
			return
		}
		l.wg.Add(1)
		go l.serve(raw)
	}
}

// transient reports whether an Accept error is worth retrying after a pause.
func transient(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (l *Listener) stop(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.loopErr = err
	close(l.stopped)
}

// track registers a connection being classified; false if the listener is closed.
func (l *Listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.pending[c] = struct{}{}
	return true
}

func (l *Listener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
}

// serve classifies raw and hands it to Accept. It holds a MaxPending slot throughout.
func (l *Listener) serve(raw net.Conn) {
	defer l.wg.Done()
	l.npending.Add(1)
	defer func() {
		l.npending.Add(-1)
		<-l.sem
	}()
	c, err := l.classify(raw)
	l.untrack(raw)
	if c == nil {
		raw.Close()
		if err != nil {
			l.failed.Add(1)
			l.log.Debug("edp: connection dropped", "remote", raw.RemoteAddr(), "err", err)
		}
		return
	}
	if c.result.Enhanced {
		l.enhanced.Add(1)
	} else {
		l.ordinary.Add(1)
	}
	select {
	case l.ready <- accepted{c: c}:
	case <-l.done:
		c.Close()
	}
}

// classify decides what raw is. It returns nil, nil for an answered probe, nil and an
// error for a connection to drop, or the Conn to hand to the application.
func (l *Listener) classify(raw net.Conn) (*Conn, error) {
	start := time.Now()
	wait := l.cfg.FirstByteWait
	if wait <= 0 {
		wait = min(max(kernelRTT(raw), DefaultFirstByteWaitMin), DefaultFirstByteWaitMax)
	}
	buf := make([]byte, AnnouncementLen)
	n := 0
	for n < len(magic) {
		// Each read may wait FirstByteWait: a client whose first bytes happen to be a
		// prefix of the magic waits at most len(magic) times that.
		raw.SetReadDeadline(time.Now().Add(wait))
		m, err := raw.Read(buf[n:])
		n += m
		if !hasMagicPrefix(buf[:n]) {
			return l.handOver(raw, buf[:n], ReasonData), nil
		}
		if n >= len(magic) {
			break
		}
		switch {
		case err == nil:
		case n == 0 && errors.Is(err, io.EOF):
			return nil, l.answerProbe(raw, start)
		case errors.Is(err, os.ErrDeadlineExceeded) && n == 0:
			return l.handOver(raw, nil, ReasonTimeout), nil
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, io.EOF):
			return l.handOver(raw, buf[:n], ReasonData), nil
		default:
			return nil, err
		}
	}
	// The magic is complete: an enhanced client.
	deadline := start.Add(l.cfg.ClassifyTimeout)
	raw.SetDeadline(deadline)
	if _, err := io.ReadFull(raw, buf[n:]); err != nil {
		return nil, fmt.Errorf("edp: reading announcement: %w", err)
	}
	if !bytes.Equal(buf, l.ann) {
		return nil, l.reject(raw, CodeStale, "stale announcement, re-probe")
	}
	m, err := readMessage(raw)
	var ve *VersionError
	switch {
	case errors.As(err, &ve):
		return nil, l.reject(raw, CodeVersion, ve.Error())
	case errors.Is(err, ErrMalformed):
		return nil, l.reject(raw, CodeMalformed, err.Error())
	case err != nil:
		return nil, fmt.Errorf("edp: reading offer: %w", err)
	case m.Type != msgOffer:
		return nil, l.reject(raw, CodeMalformed, fmt.Sprintf("message type %d instead of an offer", m.Type))
	}
	return l.negotiate(raw, m.Entries, deadline)
}

// handOver returns raw as an ordinary connection whose first bytes are prefix.
func (l *Listener) handOver(raw net.Conn, prefix []byte, r Reason) *Conn {
	raw.SetReadDeadline(time.Time{})
	return &Conn{conn: raw, raw: raw, prefix: bytes.Clone(prefix), result: Result{Reason: r}}
}

func (l *Listener) answerProbe(raw net.Conn, start time.Time) error {
	l.probes.Add(1)
	raw.SetWriteDeadline(start.Add(l.cfg.ClassifyTimeout))
	if _, err := raw.Write(l.reply); err != nil {
		return fmt.Errorf("edp: answering probe: %w", err)
	}
	return nil
}

func (l *Listener) reject(raw net.Conn, code ErrorCode, text string) error {
	b, _ := appendMessage(nil, message{Type: msgReject, Code: code, Text: text})
	if _, err := raw.Write(b); err == nil {
		// Close only once the client has read the reject and closed: closing with
		// its unread offer in our buffer would send a reset that may destroy it.
		if cw, ok := raw.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		raw.SetReadDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, io.LimitReader(raw, int64(msgHeaderLen+maxBodyLen(msgOffer))))
	}
	return &RejectError{Code: code, Text: text}
}

// negotiate answers an offer: the offered enhancements this server supports and whose
// Hello accepts, in the client's order; then the Init hooks.
func (l *Listener) negotiate(raw net.Conn, offer []entry, deadline time.Time) (*Conn, error) {
	r := Result{Enhanced: true}
	agree := message{Type: msgAgree}
	for _, o := range offer {
		r.Offered = append(r.Offered, o.ID)
		e := findEnhancement(l.cfg.Enhancements, o.ID)
		if e == nil {
			continue
		}
		a := Agreed{ID: o.ID, Peer: o.Params}
		if e.Hello != nil {
			p, s, err := e.Hello(RoleServer, o.Params)
			if err == nil && len(p) > MaxParamsLen {
				err = fmt.Errorf("%d bytes of params, limit %d", len(p), MaxParamsLen)
			}
			if err != nil {
				l.log.Debug("edp: enhancement declined", "id", o.ID, "remote", raw.RemoteAddr(), "err", err)
				continue
			}
			a.Local, a.State = p, s
		}
		r.Agreed = append(r.Agreed, a)
		agree.Entries = append(agree.Entries, entry{ID: a.ID, Params: a.Local})
	}
	b, err := appendMessage(nil, agree)
	if err != nil {
		return nil, err
	}
	if _, err := raw.Write(b); err != nil {
		return nil, fmt.Errorf("edp: writing agreement: %w", err)
	}
	ctx, cancel := context.WithDeadline(l.ctx, deadline)
	defer cancel()
	conn, err := runInits(ctx, raw, l.cfg.Enhancements, r.Agreed)
	if err != nil {
		return nil, fmt.Errorf("edp: %w", err)
	}
	raw.SetDeadline(time.Time{})
	return &Conn{conn: conn, raw: raw, result: r}, nil
}
