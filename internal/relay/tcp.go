package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// endKind says how a pair ended.
type endKind uint8

const (
	endNone  endKind = iota
	endCut           // FIN to both peers, then drain (Cut)
	endReset         // RST to both peers (Reset)
	endAbort         // RST to both peers, because one side failed (not a fault)
	endClose         // plain close (relay Close)
)

// aLongTimeAgo is a deadline in the past, used to interrupt blocked reads;
// noDeadline clears a deadline.
var (
	aLongTimeAgo = time.Unix(1, 0)
	noDeadline   time.Time
)

// pair is one relayed TCP connection: the accepted client conn and the conn
// dialed to the target.
type pair struct {
	r      *Relay
	ctx    context.Context // cancelled when the pair ends (end) or the relay closes
	cancel context.CancelFunc
	client *net.TCPConn

	mu      sync.Mutex // guards the fields below
	up      *net.TCPConn
	pumps   []*pump
	ending  endKind
	lingerT time.Time // for endCut: when draining gives up
}

func (r *Relay) acceptLoop() {
	defer r.wg.Done()
	for {
		c, err := r.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors and the like: back off a little.
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		r.stats.accepted.Add(1)
		r.mu.Lock()
		closed, refuse := r.closed, r.st.refuse
		var p *pair
		if !closed && !refuse {
			p = &pair{r: r, client: c}
			p.ctx, p.cancel = context.WithCancel(r.ctx)
			r.pairs[p] = struct{}{}
			r.wg.Add(1)
		}
		r.mu.Unlock()
		if p == nil {
			if refuse {
				r.stats.refused.Add(1)
			}
			c.SetLinger(0)
			c.Close()
			continue
		}
		go p.run()
	}
}

// run waits out a blackhole, dials the target and forwards both ways until
// both directions are finished.
func (p *pair) run() {
	r := p.r
	defer r.wg.Done()
	defer func() {
		r.mu.Lock()
		delete(r.pairs, p)
		r.mu.Unlock()
		p.cancel()
	}()
	up, ok := p.dial()
	if !ok {
		if p.ended() == endCut {
			drain(p.client, p.linger())
		}
		p.client.Close()
		return
	}
	r.log.Debug("relay: pair open", "client", p.client.RemoteAddr(), "target", up.RemoteAddr())

	upward := newPump(p, p.client, up, &r.stats.bytesUp)
	downward := newPump(p, up, p.client, &r.stats.bytesDown)
	p.mu.Lock()
	p.pumps = []*pump{upward, downward}
	p.mu.Unlock()
	done := make(chan struct{})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(done)
		p.forward(downward)
	}()
	p.forward(upward)
	<-done
	p.client.Close()
	up.Close()
	r.log.Debug("relay: pair closed", "client", p.client.RemoteAddr())
}

// dial waits while a blackhole is on, then dials the target. It returns false
// if the pair ended meanwhile or the dial failed (then the client is reset).
func (p *pair) dial() (*net.TCPConn, bool) {
	r := p.r
	for {
		st := r.snapshot()
		if p.ctx.Err() != nil {
			return nil, false
		}
		if !st.blackhole {
			break
		}
		select {
		case <-st.changed:
		case <-p.ctx.Done():
		}
	}
	d := net.Dialer{Timeout: r.cfg.DialTimeout}
	c, err := d.DialContext(p.ctx, "tcp", r.Target())
	if err != nil {
		if p.ctx.Err() == nil {
			r.stats.dialFails.Add(1)
			r.log.Debug("relay: dial failed", "err", err)
			p.end(endAbort)
		}
		return nil, false
	}
	up := c.(*net.TCPConn)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ending != endNone {
		p.apply(up)
		up.Close()
		return nil, false
	}
	p.up = up
	return up, true
}

// forward runs one direction's pump and deals with how it stopped.
func (p *pair) forward(m *pump) {
	err := m.run()
	m.release()
	if err == nil {
		return // EOF forwarded
	}
	switch p.ended() {
	case endNone:
		if errors.Is(err, errEnded) {
			return // the relay is closing; it ends the pair itself
		}
		// One side failed (a RST, say): pass the failure on, as TCP would.
		p.r.log.Debug("relay: pair failed", "err", err)
		p.end(endAbort)
	case endCut:
		drain(m.src, p.linger())
	}
}

// end ends the pair with k; only the first call has an effect, except that
// endClose always closes the sockets (ending a Cut pair's lingering).
func (p *pair) end(k endKind) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ending != endNone {
		if k == endClose {
			p.client.Close()
			if p.up != nil {
				p.up.Close()
			}
		}
		return
	}
	p.ending = k
	p.lingerT = time.Now().Add(p.r.cfg.CutLinger)
	p.cancel()
	p.apply(p.client)
	if p.up != nil {
		p.apply(p.up)
	}
}

// apply does to c what p.ending asks for; p.mu must be held.
func (p *pair) apply(c *net.TCPConn) {
	switch p.ending {
	case endCut:
		c.CloseWrite()
		// Wake the pumps; drain sets its own deadline.
		c.SetReadDeadline(aLongTimeAgo)
		c.SetWriteDeadline(aLongTimeAgo)
	case endReset, endAbort:
		c.SetLinger(0)
		c.Close()
	case endClose:
		c.Close()
	}
}

func (p *pair) ended() endKind {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ending
}

func (p *pair) linger() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lingerT
}

// interrupt makes blocked reads return at once so the pumps look at the
// relay state again. It first waits for any splice read under way, so that
// once it returns, no pump reads again without seeing the new state.
func (p *pair) interrupt() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ending != endNone {
		return
	}
	for _, m := range p.pumps {
		m.gate.Lock()
		//lint:ignore SA2001 an empty critical section is the point: a barrier
		m.gate.Unlock()
	}
	p.client.SetReadDeadline(aLongTimeAgo)
	if p.up != nil {
		p.up.SetReadDeadline(aLongTimeAgo)
	}
}

// drain reads and discards from c until EOF, an error or the deadline, so
// that closing c afterwards sends no RST for unread data.
func drain(c *net.TCPConn, deadline time.Time) {
	var buf [16 << 10]byte
	for {
		c.SetReadDeadline(deadline)
		_, err := c.Read(buf[:])
		if err == nil {
			continue
		}
		// A late interrupt from Relay.update may have moved the deadline.
		if errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(deadline) {
			continue
		}
		return
	}
}

// chunk is data read from src and waiting to be written to dst.
type chunk struct {
	b   []byte
	buf *[]byte // pooled backing buffer, or nil
	due time.Time
}

// pump moves one direction of a pair.
//
// Mode changes reach a pump blocked in a read through a read deadline in the
// past (pair.interrupt), set after the state change is published. The pump
// sets its own read deadline and only then checks whether the state changed
// (or the pair ended), so whichever deadline is set last, the pump sees the
// change.
type pump struct {
	p        *pair
	src, dst *net.TCPConn
	bytes    *atomic.Uint64
	queue    []chunk // FIFO of chunks read and not yet written
	queued   int     // bytes of buffer held by queue
	eof      bool    // src reached EOF; FIN goes out once queue is empty

	// For splice: see splice_linux.go.
	gate           sync.Mutex // held while checking the state and reading
	srcRaw, dstRaw syscall.RawConn
	pipe           *pipe
	noSplice       bool // copy through userspace only
}

func newPump(p *pair, src, dst *net.TCPConn, bytes *atomic.Uint64) *pump {
	m := &pump{p: p, src: src, dst: dst, bytes: bytes}
	m.noSplice = !spliceSupported || p.r.cfg.DisableSplice
	if !m.noSplice {
		m.srcRaw, m.dstRaw = rawConn(src), rawConn(dst)
		m.noSplice = m.srcRaw == nil || m.dstRaw == nil
	}
	return m
}

// errEnded reports that the pair ended (Cut, Reset, Close) under a pump.
var errEnded = errors.New("relay: pair ended")

// run forwards until EOF has been passed on (nil) or an error.
func (m *pump) run() error {
	r := m.p.r
	for {
		st := r.snapshot()
		if m.p.ctx.Err() != nil {
			return errEnded
		}
		var err error
		switch {
		case st.blackhole:
			select {
			case <-st.changed:
			case <-m.p.ctx.Done():
			}
		case m.eof && len(m.queue) == 0:
			return m.dst.CloseWrite()
		case !m.noSplice && !m.eof && len(m.queue) == 0 && st.delay == 0:
			err = m.splice(st)
		default:
			err = m.step(st)
		}
		if err != nil {
			return err
		}
	}
}

// stale reports whether st is out of date or the pair ended.
func (m *pump) stale(st state) bool {
	select {
	case <-st.changed:
		return true
	case <-m.p.ctx.Done():
		return true
	default:
		return false
	}
}

// step writes the chunks that are due, then reads one more chunk unless the
// queue is full or src is at EOF.
func (m *pump) step(st state) error {
	now := time.Now()
	for len(m.queue) > 0 && !m.queue[0].due.After(now) {
		if m.stale(st) {
			return nil
		}
		c := m.queue[0]
		n, err := m.dst.Write(c.b)
		m.bytes.Add(uint64(n))
		if err != nil {
			return err
		}
		m.pop()
	}
	if len(m.queue) > 0 && (m.eof || m.queued >= m.p.r.cfg.DelayBuffer) {
		t := time.NewTimer(time.Until(m.queue[0].due))
		defer t.Stop()
		select {
		case <-t.C:
		case <-st.changed:
		case <-m.p.ctx.Done():
		}
		return nil
	}
	if m.eof {
		return nil
	}

	var deadline time.Time
	if len(m.queue) > 0 {
		deadline = m.queue[0].due
	}
	m.src.SetReadDeadline(deadline)
	if m.stale(st) {
		return nil
	}
	buf := m.p.r.bufs.Get().(*[]byte)
	n, err := m.src.Read(*buf)
	if n > 0 {
		// The delay in force now, not at the snapshot: it may have changed
		// while we waited for the read.
		c := chunk{due: time.Now().Add(m.p.r.snapshot().delay)}
		if n <= bufSize/8 {
			// Small reads (interactive traffic) must not pin 64 KiB each.
			c.b = append([]byte(nil), (*buf)[:n]...)
			m.p.r.bufs.Put(buf)
		} else {
			c.b, c.buf = (*buf)[:n], buf
		}
		m.queue = append(m.queue, c)
		m.queued += cap(c.b)
	} else {
		m.p.r.bufs.Put(buf)
	}
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		m.eof = true
	case errors.Is(err, os.ErrDeadlineExceeded):
		// A chunk is due, or an interrupt: look at the state again.
	default:
		return err
	}
	return nil
}

// pop removes the head of the queue.
func (m *pump) pop() {
	c := m.queue[0]
	m.queue[0] = chunk{}
	m.queue = m.queue[1:]
	m.queued -= cap(c.b)
	if c.buf != nil {
		m.p.r.bufs.Put(c.buf)
	}
}

// release returns the queue's buffers to the pool and closes the pipe.
func (m *pump) release() {
	for len(m.queue) > 0 {
		m.pop()
	}
	if m.pipe != nil {
		m.pipe.close()
		m.pipe = nil
	}
}
