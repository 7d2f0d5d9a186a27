package tcprocks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/internal/inflight"
)

// State is a rock's state as the application sees it.
type State uint8

// States (paper section 4.1).
const (
	Connected State = iota + 1
	Suspended
	Closed
)

// String returns "connected", "suspended" or "closed".
func (s State) String() string {
	switch s {
	case Connected:
		return "connected"
	case Suspended:
		return "suspended"
	case Closed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Conn is a reliable socket: a net.Conn whose connection survives failures of the network
// under it. Against a peer that does not speak rocks/1 it is a plain TCP connection
// (Enhanced() == false) and every method goes straight to it.
//
// A Conn is safe for concurrent use. Deadlines are absolute and stay so across reconnections;
// while the rock is suspended, Read and Write block until it resumes, the deadline passes or
// the rock closes.
//
// Close is graceful and never loses data: it returns at once (pending and later calls fail with
// net.ErrClosed), and the rock lingers in the background until the peer has consumed every byte
// written, reconnecting first if it is suspended, or until the reconnect timeout expires. An
// abortive close (SO_LINGER 0) does not exist for rocks: it is a graceful close too, because a
// reset is how rocks recognise a failure (paper section 4.1).
type Conn struct {
	plain net.Conn // ordinary peer: everything goes straight to it

	cfg    *Config
	role   callbacks.Role
	id     [idLen]byte
	keys   keys
	limit  uint64 // C: most bytes in flight from us to the peer
	inLim  uint64 // most bytes in flight from the peer to us
	lst    *Listener
	dialed string // client: the address given to Dial
	netw   string // client: the network given to Dial
	ann    []byte // client: the server's EDP announcement

	ctx    context.Context // ends when the rock has finished
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the rock

	writeSem *sem                        // one Write at a time
	closedCh chan struct{}               // closed by Close
	addrs    atomic.Pointer[[2]net.Addr] // local and remote address of the last data connection
	flushSem *sem                        // one writer into the data connection at a time
	resumeMu sync.Mutex                  // one resumption at a time
	bufs     [][]byte                    // scratch for flush, under flushSem

	mu      sync.Mutex
	changed chan struct{} // closed and replaced at every change: wakes waiters
	after   []func()      // run by unlock after mu is released
	state   State
	conn    net.Conn // current data connection (reads), nil while suspended
	wconn   net.Conn // the same connection's raw TCP (writes)
	gen     uint64   // incremented at every suspension and resumption
	readers int      // reads in progress on conn
	laddr   net.Addr // = addrs, under mu
	raddr   net.Addr
	rdl     time.Time
	wdl     time.Time
	writing bool // an application Write is in the data connection (wdl applies)
	// interrupted: the read deadline of conn was moved to the past to wake readers.
	interrupted bool

	// Stream counters. sent: bytes accepted from the application; written: bytes written into
	// the current data connection (replay restarts it); acked: bytes the peer has provably
	// consumed; received: bytes this side has read from the data connection.
	sent, written, acked, received uint64
	lastReport                     uint64 // received as of the last Ack sent
	buf                            inflight.Buffer

	appClosed bool // Close was called
	localFin  finState
	finAt     uint64 // sent when CloseWrite/Close was called
	peerFin   finState
	peerFinAt uint64
	// finAcked: the peer acknowledged our FIN(full) and consumed everything (or closed).
	// peerFinAcked: we acknowledged the peer's FIN(full); peerGone: after that, its
	// connection ended. finAckSending: a FIN-ACK is on its way.
	finAcked, peerFinAcked, peerGone, finAckSending bool
	finished                                        bool  // the rock is over: no more reconnection
	finErr                                          error // why (nil: graceful)
	done                                            chan struct{}

	suspendedAt time.Time
	timer       *time.Timer // reconnect timeout
	reconnectOn bool        // client: the reconnect loop runs
	kick        chan struct{}
	ch          controlChannel
	chCancel    context.CancelFunc // client: stops dialing the control channel
	policy      callbacks.Policy
	alternates  []string
	subs        []*subscriber

	peerName     string             // the peer's locator name, from init
	established  time.Time          // when the rock was initialised
	suspensions  int                // how many times the rock suspended
	lastDowntime time.Duration      // length of the last suspension that ended
	bufHeld      int                // buf.Len() as last counted into lst.inflight
	dataTimer    *time.Timer        // watchData's; nil once finished
	dialCancel   context.CancelFunc // client: aborts the connect of a resume attempt
	dialStart    time.Time          // when that connect began
	resetBackoff bool               // client: a network change asks for an immediate retry
	netUnwatch   func()             // stops the network-change notifications
}

var _ net.Conn = (*Conn)(nil)

// rockParams are what both sides know when a rock starts.
type rockParams struct {
	role        callbacks.Role
	id          [idLen]byte
	keys        keys
	local, peer limits
	conn        net.Conn
	peerName    string
}

func newConn(cfg *Config, p rockParams) *Conn {
	c := &Conn{
		cfg:         cfg,
		role:        p.role,
		id:          p.id,
		keys:        p.keys,
		limit:       cfg.inFlightLimit(p.local, p.peer),
		inLim:       uint64(p.peer.Send) + uint64(p.local.Recv) + limitSlack,
		flushSem:    newSem(),
		writeSem:    newSem(),
		closedCh:    make(chan struct{}),
		changed:     make(chan struct{}),
		done:        make(chan struct{}),
		kick:        make(chan struct{}, 1),
		policy:      cfg.Policy,
		peerName:    p.peerName,
		established: time.Now(),
	}
	c.alternates = append(c.alternates, cfg.Alternates...)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if cfg.Handler != nil {
		c.subs = append(c.subs, &subscriber{h: cfg.Handler})
	}
	if p.conn != nil {
		c.mu.Lock()
		c.install(p.conn)
		c.mu.Unlock()
	}
	return c
}

// setState changes the rock's state and the listener's count of suspended rocks. Under mu.
func (c *Conn) setState(s State) {
	if c.lst != nil && c.state != s {
		if c.state == Suspended {
			c.lst.suspended.Add(-1)
		}
		if s == Suspended {
			c.lst.suspended.Add(1)
		}
	}
	c.state = s
}

// account counts changes of the in-flight buffer into the listener's total. Under mu.
func (c *Conn) account() {
	n := c.buf.Len()
	if c.lst != nil && n != c.bufHeld {
		c.lst.inflight.Add(int64(n - c.bufHeld))
	}
	c.bufHeld = n
}

// unlock releases mu and then runs the actions queued in c.after.
func (c *Conn) unlock() {
	a := c.after
	c.after = nil
	c.mu.Unlock()
	for _, f := range a {
		f()
	}
}

// broadcast wakes every waiter. Under mu.
func (c *Conn) broadcast() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// wait releases mu until the next broadcast or the deadline, and takes it again. It reports
// false if the deadline has passed.
func (c *Conn) wait(deadline time.Time) bool {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		d := time.Until(deadline)
		if d <= 0 {
			return false
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	ch := c.changed
	c.unlock()
	select {
	case <-ch:
	case <-timeout:
	}
	c.mu.Lock()
	return true
}

func expired(t time.Time) bool { return !t.IsZero() && !time.Now().Before(t) }

// emit queues an event for every subscriber. Under mu, which keeps events in order.
func (c *Conn) emit(e callbacks.Event) {
	e.Time = time.Now()
	e.ID = c.id
	for _, s := range c.subs {
		s.push(e, &c.wg)
	}
}

// rawConn returns the TCP connection under an EDP connection.
func rawConn(conn net.Conn) net.Conn {
	if nc, ok := conn.(interface{ NetConn() net.Conn }); ok {
		if raw := nc.NetConn(); raw != nil {
			return raw
		}
	}
	return conn
}

// install makes conn the data connection. Under mu.
func (c *Conn) install(conn net.Conn) {
	c.conn, c.wconn = conn, rawConn(conn)
	c.gen++
	c.setState(Connected)
	c.laddr, c.raddr = conn.LocalAddr(), conn.RemoteAddr()
	c.addrs.Store(&[2]net.Addr{c.laddr, c.raddr})
	_ = conn.SetReadDeadline(c.rdl)
	c.broadcast()
}

// watchData checks the data connection at every heartbeat interval, from the rock's own timer:
// heartbeats prove only the control path, which may migrate to a new address (or be absent
// after a resumption) while the data connection is dead. It runs until the rock finishes, on
// a timer rather than a goroutine of its own: an idle rock then costs no goroutine stack for
// it (at 10,000 rocks, megabytes).
func (c *Conn) watchData() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.finished {
		c.dataTimer = time.AfterFunc(c.policy.HeartbeatInterval, c.onDataTimer)
	}
}

// onDataTimer is watchData's check.
func (c *Conn) onDataTimer() {
	c.mu.Lock()
	if c.finished || c.dataTimer == nil {
		c.unlock()
		return
	}
	c.checkData()
	if !c.finished {
		c.dataTimer.Reset(c.policy.HeartbeatInterval)
	}
	c.unlock()
}

// checkData suspends a connected rock whose data connection the kernel reports closed, or
// which has had unacknowledged data and no TCP acknowledgement for MissedHeartbeats heartbeat
// intervals. Under mu.
func (c *Conn) checkData() {
	if c.state != Connected || c.wconn == nil {
		return
	}
	broken, stall := sockState(c.wconn) // one TCP_INFO read per rock and interval
	if c.readers == 0 && broken {
		c.suspend(errDataBroken)
		return
	}
	limit := c.policy.HeartbeatInterval * time.Duration(c.policy.MissedHeartbeats)
	if d := stall; d > limit {
		c.suspend(fmt.Errorf("%w: no TCP acknowledgement for %v", errDataStalled, d))
	}
}

// suspend enters the Suspended state because of cause. Under mu.
func (c *Conn) suspend(cause error) {
	if c.state != Connected || c.finished {
		return
	}
	if c.peerFinAcked && (c.closedBothWays() || peerLeft(cause)) {
		// The peer has closed its rock and will read nothing more, we have acknowledged that,
		// and we have closed ours (need nothing more from it) or it has ended its connection:
		// it has finished. (Without our acknowledgement the peer may still be waiting to
		// deliver: it resumes, and the exchange tells it; see armTimeout.)
		c.peerGone = true
		c.finish(nil)
		return
	}
	c.detach()
	c.cfg.Logger.Debug("tcprocks: suspended", "id", fmt.Sprintf("%x", c.id), "cause", cause)
	c.emit(callbacks.Event{Kind: callbacks.Suspended, Cause: cause})
	c.armTimeout()
	if c.role == callbacks.Client && !c.reconnectOn {
		c.reconnectOn = true
		c.wg.Go(c.reconnectLoop)
	}
	c.broadcast()
}

// detach drops the data connection and the control channel (closed once mu is released) and
// enters the Suspended state, with no event and no reconnection. Under mu.
func (c *Conn) detach() {
	old, ch := c.conn, c.ch
	c.conn, c.wconn, c.ch = nil, nil, nil
	c.gen++
	c.setState(Suspended)
	c.suspendedAt = time.Now()
	c.suspensions++
	if c.chCancel != nil {
		c.chCancel()
		c.chCancel = nil
	}
	c.after = append(c.after, func() {
		if old != nil {
			old.Close()
		}
		if ch != nil {
			ch.Close()
		}
	})
}

// armTimeout (re)starts the reconnect timeout of a suspended rock. Under mu.
func (c *Conn) armTimeout() {
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	d := c.policy.ReconnectTimeout
	if c.state != Suspended {
		return
	}
	gen := c.gen
	if c.canAckPeerFin() && c.role == callbacks.Server {
		// The peer closed, and we acknowledged that (or can: we read everything or closed
		// too): it needs nothing more from us, unless our acknowledgement was lost, in which
		// case it resumes within a few seconds. Wait that long, not the reconnect timeout.
		linger := 2 * c.policy.HeartbeatInterval * time.Duration(c.policy.MissedHeartbeats)
		c.timer = time.AfterFunc(time.Until(c.suspendedAt.Add(linger)), func() {
			c.mu.Lock()
			if c.state == Suspended && c.gen == gen && !c.finished {
				c.peerGone = true
				c.finish(nil)
			}
			c.unlock()
		})
		return
	}
	if d < 0 {
		return
	}
	left := time.Until(c.suspendedAt.Add(d))
	c.timer = time.AfterFunc(left, func() {
		c.mu.Lock()
		if c.state == Suspended && c.gen == gen && !c.finished {
			c.emit(callbacks.Event{Kind: callbacks.TimedOut, Downtime: time.Since(c.suspendedAt)})
			c.finish(timeoutError(d))
		}
		c.unlock()
	})
}

// finish ends the rock: no more data, no more reconnection. err nil means graceful. Under mu.
func (c *Conn) finish(err error) {
	if c.finished {
		return
	}
	c.finished, c.finErr = true, err
	c.setState(Closed)
	old, ch := c.conn, c.ch
	c.conn, c.wconn, c.ch = nil, nil, nil
	c.gen++
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	if c.chCancel != nil {
		c.chCancel()
		c.chCancel = nil
	}
	if c.dataTimer != nil {
		c.dataTimer.Stop()
		c.dataTimer = nil
	}
	c.cancel()
	unwatch := c.netUnwatch
	c.netUnwatch = nil
	c.emit(callbacks.Event{Kind: callbacks.Closed, Cause: err})
	close(c.done)
	c.broadcast()
	c.after = append(c.after, func() {
		if old != nil {
			old.Close()
		}
		if ch != nil {
			ch.Close()
		}
		if c.lst != nil {
			c.lst.remove(c)
		}
		if unwatch != nil {
			unwatch()
		}
	})
	// Free the in-flight buffer once no flush can be reading it.
	c.wg.Go(func() {
		c.flushSem.lock()
		c.mu.Lock()
		c.buf.Reset()
		c.account()
		c.mu.Unlock()
		c.flushSem.unlock()
	})
	c.cfg.Logger.Debug("tcprocks: closed", "id", fmt.Sprintf("%x", c.id), "err", err)
}

// checkDone finishes a closed rock once nothing is left to deliver. Under mu.
func (c *Conn) checkDone() {
	if c.finished || !c.appClosed {
		return
	}
	if c.finAcked || (c.peerFinAcked && c.peerGone) {
		c.finish(nil)
	}
}

// peerLeft reports whether a suspension's cause is the peer ending a connection (its control
// channel or its data connection), rather than the network failing.
func peerLeft(cause error) bool {
	return errors.Is(cause, errCtlClosed) || errors.Is(cause, errDataEOF) || errors.Is(cause, errDataBroken)
}

// closedBothWays reports whether both sides have closed their rocks (Close, not CloseWrite)
// and this side has read all it will read, so that neither needs anything more from the other.
// Under mu.
func (c *Conn) closedBothWays() bool {
	return c.appClosed && c.canAckPeerFin()
}

// canAckPeerFin reports whether the peer's FIN(full) can be acknowledged: everything it sent
// has been read, or this side has closed and will read nothing more. Under mu.
func (c *Conn) canAckPeerFin() bool {
	return c.peerFin == finFull && (c.received >= c.peerFinAt || c.appClosed)
}

// maybeFinAck sends FIN-ACK once the peer's FIN(full) can be acknowledged. Under mu.
func (c *Conn) maybeFinAck() {
	if c.peerFinAcked || c.finAckSending || c.ch == nil || !c.canAckPeerFin() {
		return
	}
	c.finAckSending = true
	ch, m, ctx := c.ch, appendFinAck(nil, c.received), c.ctx
	c.wg.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, c.cfg.ResumeTimeout)
		err := ch.Send(ctx, m)
		cancel()
		c.mu.Lock()
		c.finAckSending = false
		if err == nil {
			c.peerFinAcked = true
			c.checkDone()
		}
		c.broadcast()
		c.unlock()
	})
}

// Read reads data from the rock. While the rock is suspended it blocks.
func (c *Conn) Read(b []byte) (int, error) {
	if c.plain != nil {
		return c.plain.Read(b)
	}
	c.mu.Lock()
	for {
		switch {
		case c.appClosed:
			c.unlock()
			return 0, c.opError("read", net.ErrClosed)
		case c.peerFin != finNone && c.received >= c.peerFinAt:
			c.unlock()
			return 0, io.EOF
		case c.finished:
			err := c.finErr
			c.unlock()
			if err == nil {
				err = net.ErrClosed
			}
			return 0, c.opError("read", err)
		case expired(c.rdl):
			c.unlock()
			return 0, c.opError("read", errDeadline)
		case len(b) == 0:
			c.unlock()
			return 0, nil
		case c.conn != nil:
			n, err, done := c.readConn(b)
			if done {
				c.unlock()
				return n, err
			}
			continue
		}
		c.wait(c.rdl)
	}
}

// readConn reads once from the data connection. Under mu (released during the read). done
// says whether Read should return (n, err).
func (c *Conn) readConn(b []byte) (n int, err error, done bool) {
	conn, gen := c.conn, c.gen
	if c.peerFin != finNone {
		b = b[:min(uint64(len(b)), c.peerFinAt-c.received)]
	}
	c.readers++
	c.mu.Unlock()
	n, err = conn.Read(b)
	c.mu.Lock()
	c.readers--
	c.received += uint64(n)
	if c.interrupted && c.readers == 0 {
		c.interrupted = false
		if c.conn == conn {
			_ = conn.SetReadDeadline(c.rdl)
		}
	}
	if c.readers == 0 && c.gen != gen {
		c.broadcast() // a resumption may be waiting for the reader to leave
	}
	c.maybeAck()
	c.maybeFinAck()
	if err != nil && c.gen == gen {
		switch {
		case isTimeout(err) && expired(c.rdl):
			if n == 0 {
				return 0, c.opError("read", errDeadline), true
			}
		case isTimeout(err):
			// The deadline moved; read again.
		default:
			if err == io.EOF {
				err = errDataEOF
			}
			c.suspend(err)
		}
	}
	return n, nil, n > 0
}

// interruptReaders makes reads in progress on the data connection return (they see a
// timeout and look at the rock's state again). Under mu.
func (c *Conn) interruptReaders() {
	if c.conn != nil && c.readers > 0 {
		c.interrupted = true
		_ = c.conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// ackEvery is how far the consumed count advances before an early acknowledgement (at most
// a quarter of what can be in flight). The control channel sends at most one per 2 ms; small
// steps keep the peer's in-flight buffer small, which keeps it in the CPU caches.
const ackEvery = 256 << 10

// maybeAck sends an early acknowledgement when the consumed count advanced by ackEvery or
// reached the peer's final count. Under mu.
func (c *Conn) maybeAck() {
	atFin := c.peerFin != finNone && c.received == c.peerFinAt && c.lastReport != c.received
	if c.ch == nil || (c.received-c.lastReport < min(c.inLim/4, ackEvery) && !atFin) {
		return
	}
	c.lastReport = c.received
	ch, n := c.ch, c.received
	c.after = append(c.after, func() { _ = ch.Ack(n) })
}

// Write writes data to the rock. Every byte is kept until the peer has consumed it; while the
// rock is suspended, Write blocks. A Write that returned without error is delivered even if the
// data connection fails afterwards.
func (c *Conn) Write(b []byte) (int, error) {
	if c.plain != nil {
		return c.plain.Write(b)
	}
	if err := c.acquire(c.writeSem); err != nil {
		return 0, c.opError("write", err)
	}
	defer c.writeSem.unlock()
	total := 0
	c.mu.Lock()
	for {
		switch {
		case c.appClosed || c.localFin != finNone:
			c.unlock()
			return total, c.opError("write", net.ErrClosed)
		case c.peerFin == finFull:
			c.unlock()
			return total, c.opError("write", ErrPeerClosed)
		case c.finished:
			err := c.finErr
			c.unlock()
			if err == nil {
				err = net.ErrClosed
			}
			return total, c.opError("write", err)
		case len(b) == 0:
			c.unlock()
			return total, nil
		case expired(c.wdl):
			c.unlock()
			return total, c.opError("write", errDeadline)
		case c.state == Connected && c.sent-c.buf.Start() < c.capacity():
			k := min(uint64(len(b)), c.capacity()-(c.sent-c.buf.Start()))
			committed := c.sent
			c.buf.Append(b[:k])
			c.account()
			c.sent += k
			c.unlock()
			_, err := c.flush(true)
			c.mu.Lock()
			if err != nil {
				// The deadline passed: take back what did not go into TCP.
				keep := max(c.written, committed)
				if c.localFin != finNone {
					// Close already counted these bytes in its final count: deliver them.
					keep = c.sent
				}
				if keep < c.sent {
					c.buf.Truncate(keep)
					c.account()
					c.sent = keep
				}
				c.unlock()
				return total + int(keep-committed), c.opError("write", err)
			}
			total += int(k)
			b = b[k:]
			if len(b) == 0 {
				// Everything is committed: a close by either side from now on does not
				// undo this Write.
				c.unlock()
				return total, nil
			}
			continue
		}
		c.wait(c.wdl)
	}
}

// acquire takes sem, giving up when the write deadline passes or at Close.
func (c *Conn) acquire(s *sem) error {
	if s.tryLock() {
		return nil
	}
	for {
		c.mu.Lock()
		dl, changed := c.wdl, c.changed
		c.mu.Unlock()
		var timeout <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			t = time.NewTimer(time.Until(dl))
			timeout = t.C
		}
		ok := s.lockOr(timeout, c.closedCh, changed)
		if t != nil {
			t.Stop()
		}
		switch {
		case ok:
			return nil
		case isClosedChan(c.closedCh):
			return net.ErrClosed
		case expired(dl):
			return errDeadline
		}
		// The deadline may have moved: look again.
	}
}

func isClosedChan(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// capacity is the in-flight buffer's size: C plus room for one large write. Under mu.
func (c *Conn) capacity() uint64 { return c.limit + 256<<10 }

// flush writes the buffered bytes [written, sent) into the data connection. app says whether
// the application's write deadline applies. It returns a deadline error only when that
// deadline passed; a failing connection suspends the rock and the bytes wait for the replay.
func (c *Conn) flush(app bool) (bool, error) {
	if app {
		if err := c.acquire(c.flushSem); err != nil {
			return false, err
		}
	} else {
		c.flushSem.lock()
	}
	defer c.flushSem.unlock()
	for {
		c.mu.Lock()
		if c.state != Connected || c.written >= c.sent || c.finished {
			c.unlock()
			return true, nil
		}
		conn, gen, from := c.wconn, c.gen, c.written
		c.bufs = c.buf.Slices(c.bufs[:0], from, c.sent)
		if app {
			c.writing = true
			if !c.wdl.IsZero() {
				_ = conn.SetWriteDeadline(c.wdl)
			}
		}
		c.mu.Unlock()
		var n int64
		var err error
		if len(c.bufs) == 1 {
			var k int
			k, err = conn.Write(c.bufs[0])
			n = int64(k)
		} else {
			bufs := net.Buffers(c.bufs)
			n, err = bufs.WriteTo(conn)
		}
		c.mu.Lock()
		clear(c.bufs)
		if app {
			c.writing = false
			if !c.wdl.IsZero() || isTimeout(err) {
				_ = conn.SetWriteDeadline(time.Time{})
			}
		}
		if c.gen == gen {
			c.written = from + uint64(n)
			if c.written > c.limit {
				c.ack(c.written - c.limit)
			}
		}
		if app && err != nil && c.appClosed {
			c.unlock()
			return false, net.ErrClosed
		}
		if err != nil && c.gen == gen {
			if app && isTimeout(err) && expired(c.wdl) {
				c.unlock()
				return false, errDeadline
			}
			if !isTimeout(err) {
				c.suspend(err)
			}
		}
		c.unlock()
	}
}

// ack records that the peer has consumed every byte before n. Under mu.
func (c *Conn) ack(n uint64) {
	if n <= c.acked || n > c.sent {
		return
	}
	c.acked = n
	c.buf.Release(n)
	c.account()
	c.checkDone()
	c.broadcast()
}

// Close closes the rock gracefully; see the type's documentation. Pending and later calls fail
// with net.ErrClosed.
func (c *Conn) Close() error {
	if c.plain != nil {
		return c.plain.Close()
	}
	c.mu.Lock()
	if c.appClosed {
		c.unlock()
		return c.opError("close", net.ErrClosed)
	}
	c.appClosed = true
	close(c.closedCh)
	// Unblock pending I/O: nobody reads after Close, and a pending Write gives back what did
	// not reach TCP (the linger writes the rest of what was committed).
	c.interruptReaders()
	if c.writing && c.wconn != nil {
		_ = c.wconn.SetWriteDeadline(time.Unix(1, 0))
	}
	c.setLocalFin(finFull)
	c.maybeFinAck()
	c.checkDone()
	if c.state == Suspended {
		c.armTimeout() // closing may shorten the wait for the peer
	}
	if !c.finished {
		c.wg.Go(c.linger)
	}
	c.broadcast()
	c.unlock()
	return nil
}

// CloseWrite shuts down the writing side: the peer reads io.EOF after the last byte written,
// and this side can still read. Pending and later writes fail with net.ErrClosed.
func (c *Conn) CloseWrite() error {
	if c.plain != nil {
		if cw, ok := c.plain.(interface{ CloseWrite() error }); ok {
			return cw.CloseWrite()
		}
		return c.opError("close", net.ErrClosed)
	}
	c.mu.Lock()
	defer c.unlock()
	if c.appClosed || c.finished {
		return c.opError("close", net.ErrClosed)
	}
	if c.localFin == finNone {
		c.setLocalFin(finWrite)
		c.broadcast()
	}
	return nil
}

// setLocalFin records a close and tells the peer. Under mu.
func (c *Conn) setLocalFin(f finState) {
	if c.localFin == finNone {
		c.finAt = c.sent
	}
	if f > c.localFin {
		c.localFin = f
		c.sendFin()
	}
}

// sendFin sends FIN on the control channel, if there is one. Under mu.
func (c *Conn) sendFin() {
	if c.ch == nil || c.localFin == finNone || c.finished {
		return
	}
	ch, m := c.ch, appendFin(nil, finMsg{Fin: c.localFin, Count: c.finAt})
	ctx := c.ctx
	c.wg.Go(func() {
		ctx, cancel := context.WithTimeout(ctx, c.cfg.ResumeTimeout)
		defer cancel()
		if err := ch.Send(ctx, m); err != nil {
			c.cfg.Logger.Debug("tcprocks: sending FIN", "err", err)
		}
	})
}

// linger runs after Close until the rock has finished: it writes what is buffered and, when
// no control channel carries the FIN, suspends the rock so that the resumption exchange
// (which carries both sides' close state and counts) completes the close.
func (c *Conn) linger() {
	for {
		_, _ = c.flush(false)
		c.mu.Lock()
		if c.finished {
			c.unlock()
			return
		}
		interval := c.policy.HeartbeatInterval * time.Duration(c.policy.MissedHeartbeats)
		noCtl := c.state == Connected && c.ch == nil
		gen := c.gen
		ch := c.changed
		c.unlock()
		t := time.NewTimer(interval)
		select {
		case <-ch:
			t.Stop()
		case <-t.C:
			c.mu.Lock()
			if noCtl && c.ch == nil && c.gen == gen && c.state == Connected {
				if wc, ok := c.wconn.(interface{ CloseWrite() error }); ok && c.written == c.sent {
					_ = wc.CloseWrite()
				}
				c.suspend(errLingerNoCtl)
			}
			c.unlock()
		case <-c.done:
			t.Stop()
		}
	}
}

// LocalAddr returns the local address of the current (or last) data connection.
func (c *Conn) LocalAddr() net.Addr {
	if c.plain != nil {
		return c.plain.LocalAddr()
	}
	return c.addrs.Load()[0]
}

// RemoteAddr returns the peer's address on the current (or last) data connection.
func (c *Conn) RemoteAddr() net.Addr {
	if c.plain != nil {
		return c.plain.RemoteAddr()
	}
	return c.addrs.Load()[1]
}

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	if c.plain != nil {
		return c.plain.SetDeadline(t)
	}
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline; it applies to pending reads and across
// reconnections.
func (c *Conn) SetReadDeadline(t time.Time) error {
	if c.plain != nil {
		return c.plain.SetReadDeadline(t)
	}
	c.mu.Lock()
	defer c.unlock()
	c.rdl = t
	if c.conn != nil {
		_ = c.conn.SetReadDeadline(t)
	}
	c.broadcast()
	return nil
}

// SetWriteDeadline sets the write deadline; it applies to pending writes and across
// reconnections.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if c.plain != nil {
		return c.plain.SetWriteDeadline(t)
	}
	c.mu.Lock()
	defer c.unlock()
	c.wdl = t
	if c.writing && c.wconn != nil {
		_ = c.wconn.SetWriteDeadline(t)
	}
	c.broadcast()
	return nil
}

// Enhanced reports whether the peer speaks rocks/1. When false the Conn is plain TCP.
func (c *Conn) Enhanced() bool { return c.plain == nil }

// State returns Connected, Suspended or Closed (Closed as soon as Close was called, even while
// the rock lingers to deliver its last bytes).
func (c *Conn) State() State {
	if c.plain != nil {
		return Connected
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.appClosed {
		return Closed
	}
	return c.state
}

// ID returns the rock's connection ID (zero for a plain TCP Conn).
func (c *Conn) ID() [16]byte { return c.id }

// Policy returns the rock's current policy.
func (c *Conn) Policy() callbacks.Policy {
	if c.plain != nil {
		return c.cfg.Policy
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.policy
}

// SetPolicy changes the rock's policy (zero fields: defaults). Heartbeat settings apply from
// the next heartbeat; the reconnect timeout of a suspended rock is re-armed relative to the
// start of its suspension.
func (c *Conn) SetPolicy(p callbacks.Policy) {
	if c.plain != nil {
		return
	}
	p = p.WithDefaults()
	c.mu.Lock()
	c.policy = p
	ch := c.ch
	if c.state == Suspended {
		c.armTimeout()
	}
	c.poke()
	c.unlock()
	if ch != nil {
		ch.SetPolicy(p.HeartbeatInterval, p.MissedHeartbeats)
	}
}

// SetAlternates replaces the alternate addresses ("host:port") at which a suspended rock looks
// for its peer after the last known address. A suspended rock tries them at once.
func (c *Conn) SetAlternates(addrs ...string) {
	if c.plain != nil {
		return
	}
	c.mu.Lock()
	c.alternates = append([]string(nil), addrs...)
	c.poke()
	c.unlock()
}

// Suspend suspends the rock now, as if its connection had failed: the data connection is
// dropped and (on the dialing side) a reconnection starts at once.
func (c *Conn) Suspend() {
	if c.plain != nil {
		return
	}
	c.mu.Lock()
	c.suspend(errRequested)
	c.unlock()
}

// Subscribe adds a handler for the rock's events and returns a function that removes it.
func (c *Conn) Subscribe(h callbacks.Handler) (cancel func()) {
	if c.plain != nil {
		return func() {}
	}
	s := &subscriber{h: h}
	c.mu.Lock()
	c.subs = append(c.subs, s)
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		for i, x := range c.subs {
			if x == s {
				c.subs = append(c.subs[:i:i], c.subs[i+1:]...)
				break
			}
		}
		c.mu.Unlock()
		s.cancel()
	}
}

// poke wakes the reconnect loop. Under mu.
func (c *Conn) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
	c.broadcast()
}
