package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Heartbeat policy defaults.
const (
	DefaultInterval = time.Second
	DefaultMisses   = 3
	DefaultAckGap   = 2 * time.Millisecond
)

// msgQueueLen bounds the received control messages waiting for OnMessage;
// beyond it the reader stops reading and QUIC flow control pushes back.
const msgQueueLen = 8

// drainGrace is how long the loop looks for queued heartbeats before the
// peer's deadline, if already past, is enforced (after a slow callback).
const drainGrace = 5 * time.Millisecond

// Heartbeat configures a Channel's heartbeat loop and its callbacks. All
// callbacks are optional; OnHeartbeat, OnMessage and OnDead are called from one
// goroutine per channel, in order, never under a lock, and none starts after
// Close has returned. Consumed is called from that goroutine and, for a channel
// on a QUIC session, from the session's heartbeat (never under a lock).
// Callbacks should be quick. Consumed must not block: on a QUIC session a slow
// Consumed delays the heartbeats of every channel of the session. Over TCP,
// while a callback runs no heartbeat is sent, so one blocking longer than the
// peer's Misses*Interval makes the peer declare this end dead.
type Heartbeat struct {
	// Interval between two heartbeats sent. Default 1s (DefaultInterval), or
	// the value last given to SetPolicy.
	Interval time.Duration
	// Misses is how many intervals may pass with no heartbeat from the peer
	// before OnDead is called. Default 3 (DefaultMisses), or the value last
	// given to SetPolicy.
	Misses int
	// AckGap is the least time between two heartbeats sent because of Ack:
	// Ack called in a tight loop sends at most one heartbeat per AckGap (the
	// last one carries the latest count). Default 2ms (DefaultAckGap).
	AckGap time.Duration
	// Consumed returns the value sent in each heartbeat: the total number of
	// bytes the local application has consumed. nil sends 0 (or the value
	// given to Ack). The channel never sends a value lower than one it sent.
	Consumed func() uint64
	// OnHeartbeat is called for every heartbeat received that carries the
	// peer's consumed count (an acknowledgement of the bytes we sent): over a
	// QUIC session only when the count changed (and twice more after), at the
	// peer's Start and after its Acks; over TCP every Interval too. The value
	// never decreases, even if datagrams are reordered. Silence is judged by
	// the session: any datagram from the peer's session proves it alive.
	OnHeartbeat func(peerConsumed uint64)
	// OnMessage is called with each control message from the peer (see
	// Send), in order. m belongs to the callee.
	OnMessage func(m []byte)
	// OnDead is called exactly once when Misses intervals pass with no
	// heartbeat from the peer (the error is a *HeartbeatTimeoutError), or when
	// the QUIC connection dies (idle timeout, peer close — wrapping
	// ErrPeerClosed —, transport closed, protocol violation). All errors wrap
	// net.ErrClosed: the channel is closed by then. OnDead is not called when
	// the channel was closed locally with Close first.
	OnDead func(err error)
}

// Channel is a verified control channel: both ends proved the rock's control
// key over this very TLS session. Send may be called concurrently with the
// other methods; callbacks are set with Start.
type Channel struct {
	id    ID
	conn  link
	log   *slog.Logger
	idle  time.Duration // QUIC idle timeout we asked for (safety net)
	owner *registry

	acceptTimer *time.Timer // server: closes the channel if Accept does not take it in time

	// ses is the QUIC session the channel shares (nil over TCP). A shared channel sends no
	// periodic heartbeat of its own: its session sends one datagram per interval for all its
	// channels, carrying the counts that changed, and declares channels dead when the peer's
	// session falls silent (see session.tick).
	ses    *session
	repeat int // shared: periodic datagrams that still carry sentMax (losses)

	sendSem    chan struct{} // serialises Send: one frame at a time on the stream
	msgs       chan []byte   // reader -> loop
	loopDone   chan struct{}
	readerDone chan struct{}
	inCallback atomic.Bool // the loop is running a callback

	// Set once by Start, read by the loop only.
	h Heartbeat

	mu          sync.Mutex
	started     bool
	userClosed  bool  // Close was called
	deadErr     error // why the channel died (first cause wins)
	interval    time.Duration
	misses      int
	kick        bool               // the loop has work (messages, policy, ack, timer)
	wake        context.CancelFunc // interrupts the loop's ReceiveDatagram
	timer       *time.Timer        // next send, ack or deadline (runtime timer, no goroutine)
	lastRecv    time.Time          // last heartbeat received, or Start
	lastSent    time.Time          // last heartbeat sent
	nextSend    time.Time          // next periodic heartbeat
	ackPending  bool
	sentMax     uint64 // highest consumed value sent or asked for by Ack
	peerMax     uint64 // highest consumed value received
	closeCalled bool   // CloseWithError issued
}

func newChannel(id ID, conn link, log *slog.Logger, idle time.Duration) *Channel {
	ch := &Channel{
		id:         id,
		conn:       conn,
		log:        log,
		idle:       idle,
		sendSem:    make(chan struct{}, 1),
		msgs:       make(chan []byte, msgQueueLen),
		loopDone:   make(chan struct{}),
		readerDone: make(chan struct{}),
		interval:   DefaultInterval,
		misses:     DefaultMisses,
	}
	if vl, ok := conn.(*vlink); ok {
		ch.ses = vl.s
		vl.ch.Store(ch)
	}
	return ch
}

// ID returns the rock's connection ID the channel is bound to.
func (ch *Channel) ID() ID { return ch.id }

// LocalAddr returns the local address of the channel: UDP, or TCP for the
// fallback (see Network).
func (ch *Channel) LocalAddr() net.Addr { return ch.conn.LocalAddr() }

// RemoteAddr returns the peer's current address: UDP (it follows QUIC path
// migration), or TCP for the fallback.
func (ch *Channel) RemoteAddr() net.Addr { return ch.conn.RemoteAddr() }

// Network returns "udp" for a channel over QUIC and "tcp" for one over the TCP
// fallback (DialTCP, ServeTCP).
func (ch *Channel) Network() string {
	if _, ok := ch.conn.(*tcpLink); ok {
		return "tcp"
	}
	return "udp"
}

// Start runs the heartbeat loop with h: a heartbeat is sent at once and then
// every Interval (on a QUIC session, by the session, only when the count
// changed; see docs/protocol.md §3.3); received heartbeats and control
// messages are handed to the callbacks. Only the first call has an effect; Start after Close does nothing.
func (ch *Channel) Start(h Heartbeat) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.started || ch.userClosed {
		return
	}
	ch.started = true
	if h.Interval > 0 {
		ch.interval = h.Interval
	}
	if h.Misses > 0 {
		ch.misses = h.Misses
	}
	if h.AckGap <= 0 {
		h.AckGap = DefaultAckGap
	}
	ch.h = h
	now := time.Now()
	ch.lastRecv = now
	ch.nextSend = now
	ch.timer = time.AfterFunc(ch.interval, ch.onTimer)
	if ch.ses != nil {
		// The first heartbeat goes at once, as an ack; the session does the rest.
		ch.ackPending = true
		ch.kick = true
		defer ch.ses.started(ch.interval)
	}
	ch.checkIdleLocked()
	go ch.loop()
	go ch.readLoop()
}

// SetPolicy changes the heartbeat interval and the number of missed
// intervals that declares the peer dead; zero or negative values select the
// defaults. It takes effect at once: the next heartbeat is due one new
// interval after the last one sent. Before Start it sets the policy Start uses
// when its Heartbeat leaves Interval or Misses zero.
//
// The QUIC idle timeout is fixed at the handshake (ClientConfig.IdleTimeout,
// ServerConfig.IdleTimeout): if Interval*Misses exceeds it, a silent peer is
// detected by QUIC first and OnDead gets that error instead.
func (ch *Channel) SetPolicy(interval time.Duration, misses int) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	if misses <= 0 {
		misses = DefaultMisses
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.started {
		ch.nextSend = ch.nextSend.Add(interval - ch.interval)
	}
	ch.interval, ch.misses = interval, misses
	if ch.started {
		ch.checkIdleLocked()
		ch.kickLocked()
		if ch.ses != nil {
			defer ch.ses.started(interval)
		}
	}
}

func (ch *Channel) checkIdleLocked() {
	if dead := ch.interval * time.Duration(ch.misses); dead >= ch.idle {
		ch.log.Warn("control: heartbeat timeout exceeds the QUIC idle timeout, which will decide first",
			"heartbeat_timeout", dead, "idle_timeout", ch.idle)
	}
}

// Ack sends an extra heartbeat carrying consumed right away, so the peer can
// release acknowledged bytes promptly. It never blocks: the heartbeat loop
// sends it, at most one per Heartbeat.AckGap (calls in between only raise the
// value the next one carries). Before Start the value is kept for the first
// heartbeat. It fails only on a closed channel.
func (ch *Channel) Ack(consumed uint64) error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if err := ch.closedErrLocked(); err != nil {
		return err
	}
	if consumed > ch.sentMax {
		ch.sentMax = consumed
	}
	if !ch.ackPending {
		ch.ackPending = true
		if ch.started {
			ch.kickLocked()
		}
	}
	return nil
}

// Send delivers m to the peer's OnMessage, reliably and in order, on the
// control stream. m may be at most MaxMessageLen bytes (ErrMessageTooLong).
// Send returns once m is queued in QUIC (not when the peer has read it). ctx
// bounds the wait for flow control; if it ends after part of the frame was
// written, the channel is closed, because the stream can no longer be framed.
func (ch *Channel) Send(ctx context.Context, m []byte) error {
	if len(m) > MaxMessageLen {
		return ErrMessageTooLong
	}
	select {
	case ch.sendSem <- struct{}{}:
	case <-ctx.Done():
		return ctxError("send", ctx)
	}
	defer func() { <-ch.sendSem }()
	ch.mu.Lock()
	err := ch.closedErrLocked()
	ch.mu.Unlock()
	if err != nil {
		return err
	}
	frame, _ := AppendMessage(make([]byte, 0, MessageHeaderLen+len(m)), m)
	n, err := ch.conn.writeFrame(ctx, frame)
	if err == nil {
		return nil
	}
	if !errors.Is(err, net.ErrClosed) { // the connection lives: ctx ended
		if n > 0 {
			err = fmt.Errorf("control: send: message cut after %d of %d bytes: %w", n, len(frame), err)
			ch.die(codeSendFailed, err)
			return err
		}
		return ctxError("send", ctx)
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if cerr := ch.closedErrLocked(); cerr != nil {
		return cerr
	}
	return connError(err)
}

// closedErrLocked returns the error for an operation on a closed or dead channel.
func (ch *Channel) closedErrLocked() error {
	if ch.userClosed {
		return ErrClosed
	}
	if ch.deadErr != nil {
		return ch.deadErr
	}
	if cause := context.Cause(ch.conn.Context()); cause != nil {
		return connError(cause)
	}
	return nil
}

// Close closes the channel: it sends a QUIC CONNECTION_CLOSE (application
// error 0, "closed") and waits for the channel's goroutines. It is idempotent.
// Close may be called from a callback: then, and whenever a callback is
// running at that moment, it returns without waiting for that callback to
// finish; no further callback is made.
func (ch *Channel) Close() error {
	ch.mu.Lock()
	first := !ch.userClosed
	ch.userClosed = true
	started := ch.started
	ch.mu.Unlock()
	if first {
		ch.shutdown(codeClosed, "closed")
	}
	if started {
		<-ch.readerDone
		if !ch.inCallback.Load() {
			<-ch.loopDone
		}
	}
	return nil
}

// die records why the channel died (first cause wins) and closes it.
func (ch *Channel) die(code quic.ApplicationErrorCode, cause error) {
	ch.mu.Lock()
	if ch.deadErr == nil && !ch.userClosed {
		ch.deadErr = cause
	}
	ch.mu.Unlock()
	ch.log.Debug("control: channel dead", "id", ch.id, "err", cause)
	ch.shutdown(code, cause.Error())
}

// shutdown sends CONNECTION_CLOSE once, wakes the loop and unregisters.
func (ch *Channel) shutdown(code quic.ApplicationErrorCode, reason string) {
	ch.mu.Lock()
	first := !ch.closeCalled
	ch.closeCalled = true
	if ch.timer != nil {
		ch.timer.Stop()
	}
	ch.kickLocked()
	ch.mu.Unlock()
	if first {
		ch.conn.CloseWithError(code, reason)
	}
	<-ch.conn.Context().Done()
	if ch.owner != nil {
		ch.owner.remove(ch)
	}
}

// kickLocked tells the loop it has work and interrupts its ReceiveDatagram.
func (ch *Channel) kickLocked() {
	ch.kick = true
	if ch.wake != nil {
		ch.wake()
		ch.wake = nil
	}
}

// onTimer runs on the runtime's timer goroutine when a heartbeat, an ack or
// the peer's deadline is due. It declares the peer dead itself, so that a loop
// stuck in SendDatagram (full datagram queue) cannot delay detection.
func (ch *Channel) onTimer() {
	ch.mu.Lock()
	if ch.userClosed || ch.deadErr != nil || ch.closeCalled {
		ch.mu.Unlock()
		return
	}
	if ch.ses != nil { // an ack is due; the session judges the peer
		ch.kickLocked()
		ch.mu.Unlock()
		return
	}
	dead := ch.interval * time.Duration(ch.misses)
	silence := time.Since(ch.lastRecv)
	if ch.inCallback.Load() {
		// Heartbeats may be waiting in QUIC's queue behind a slow callback:
		// judge after it returns (the loop re-arms the timer then).
		ch.timer.Reset(ch.interval)
		ch.mu.Unlock()
		return
	}
	if silence < dead {
		ch.timer.Reset(dead - silence) // the loop sets an earlier time if it needs one
		ch.kickLocked()
		ch.mu.Unlock()
		return
	}
	err := &HeartbeatTimeoutError{Silence: silence, Interval: ch.interval, Misses: ch.misses}
	ch.mu.Unlock()
	ch.die(codeDead, err)
}

// loop is the channel's one long-lived goroutine besides the stream reader: it
// receives heartbeat datagrams, sends heartbeats and runs all callbacks.
func (ch *Channel) loop() {
	defer close(ch.loopDone)
	var (
		buf   [HeartbeatLen]byte
		ctx   context.Context
		wake  context.CancelFunc
		cause error
	)
	for {
		ch.mu.Lock()
		if ch.userClosed || ch.deadErr != nil {
			ch.mu.Unlock()
			break
		}
		now := time.Now()
		send := false
		if ch.ses == nil && !now.Before(ch.nextSend) {
			send = true
			ch.nextSend = now.Add(ch.interval)
		}
		ackDue := ch.lastSent.Add(ch.h.AckGap)
		if ch.ackPending && !now.Before(ackDue) {
			send = true
		}
		value := ch.sentMax
		kicked := ch.kick
		if send {
			ch.ackPending = false
			ch.lastSent = now
		} else if kicked {
			ch.kick = false
		} else if ch.ses != nil {
			if ch.ackPending {
				ch.timer.Reset(ackDue.Sub(now))
			} else {
				ch.timer.Stop()
			}
			ctx, wake = context.WithCancel(context.Background())
			ch.wake = wake
		} else {
			next := earliest(ch.nextSend, ch.lastRecv.Add(ch.interval*time.Duration(ch.misses)))
			if ch.ackPending {
				next = earliest(next, ackDue)
			}
			d := next.Sub(now)
			if d <= 0 {
				// Only the peer's deadline can be past here. Datagrams may
				// have queued while we were busy: look at them first.
				d = drainGrace
			}
			ch.timer.Reset(d)
			ctx, wake = context.WithCancel(context.Background())
			ch.wake = wake
		}
		ch.mu.Unlock()

		if send {
			ch.sendHeartbeat(buf[:0], value)
			continue
		}
		if kicked {
			ch.deliverMessages()
			continue
		}
		d, err := ch.conn.ReceiveDatagram(ctx)
		wake()
		if err != nil {
			if ch.conn.Context().Err() == nil && ctx.Err() != nil {
				continue // woken up
			}
			cause = err
			break
		}
		ch.handleDatagram(d)
	}
	ch.finish(cause)
}

func (ch *Channel) sendHeartbeat(buf []byte, value uint64) {
	if ch.h.Consumed != nil {
		value = max(value, ch.callConsumed())
	}
	ch.mu.Lock()
	value = max(value, ch.sentMax)
	ch.sentMax = value
	ch.repeat = sessionRepeats
	ch.mu.Unlock()
	if err := ch.conn.SendDatagram(AppendHeartbeat(buf, value)); err != nil {
		ch.log.Debug("control: heartbeat not sent", "id", ch.id, "err", err)
	}
}

func (ch *Channel) handleDatagram(d []byte) {
	v, n, err := ParseHeartbeat(d)
	if err == nil && n != len(d) {
		err = parseError("heartbeat", ErrTooLong)
	}
	if err != nil {
		ch.die(codeProtocol, err)
		return
	}
	ch.mu.Lock()
	ch.lastRecv = time.Now()
	ch.peerMax = max(ch.peerMax, v)
	v = ch.peerMax
	ch.mu.Unlock()
	if f := ch.h.OnHeartbeat; f != nil {
		ch.callback(func() { f(v) })
	}
}

// deliverMessages hands the queued control messages to OnMessage.
func (ch *Channel) deliverMessages() {
	for {
		select {
		case m := <-ch.msgs:
			if f := ch.h.OnMessage; f != nil {
				ch.callback(func() { f(m) })
			}
		default:
			return
		}
	}
}

// finish ends the loop: messages already received are delivered, then OnDead.
func (ch *Channel) finish(cause error) {
	if c := context.Cause(ch.conn.Context()); c != nil {
		cause = c // the connection's own error, not our wake-up context's
	}
	ch.mu.Lock()
	userClosed := ch.userClosed
	if ch.deadErr == nil && !userClosed {
		ch.deadErr = connError(cause)
	}
	err := ch.deadErr
	ch.mu.Unlock()
	if userClosed {
		return
	}
	ch.shutdown(codeClosed, "closed") // no-op if already closed; unregisters
	<-ch.readerDone                   // the reader may still queue a message
	ch.deliverMessages()
	ch.mu.Lock()
	userClosed = ch.userClosed
	ch.mu.Unlock()
	if f := ch.h.OnDead; f != nil && !userClosed {
		ch.callback(func() { f(err) })
	}
}

// callback runs f on the loop goroutine, marked so Close can tell.
func (ch *Channel) callback(f func()) {
	ch.inCallback.Store(true)
	defer ch.inCallback.Store(false)
	f()
}

func (ch *Channel) callConsumed() uint64 {
	var v uint64
	ch.callback(func() { v = ch.h.Consumed() })
	return v
}

// readLoop reads framed control messages from the stream and queues them for
// the loop.
func (ch *Channel) readLoop() {
	defer close(ch.readerDone)
	for {
		m, err := ch.conn.readMessage()
		if err != nil {
			ch.readFailed(err)
			return
		}
		select {
		case ch.msgs <- m:
		case <-ch.conn.Context().Done():
			return
		}
		ch.mu.Lock()
		ch.kickLocked()
		ch.mu.Unlock()
	}
}

func (ch *Channel) readFailed(err error) {
	if errors.Is(err, ErrShort) || errors.Is(err, ErrTooLong) || errors.Is(err, ErrVersion) || errors.Is(err, ErrBadFrame) {
		ch.die(codeProtocol, err)
		return
	}
	if ch.conn.Context().Err() != nil || errors.Is(err, net.ErrClosed) {
		return // the connection ended: the loop reports it
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = errors.New("control: peer closed the control stream")
	}
	ch.die(codeProtocol, fmt.Errorf("control: control stream: %w", err))
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// sessionRepeats is how many periodic session datagrams repeat a channel's count after it
// changed, so that the loss of a datagram does not hide an acknowledgement.
const sessionRepeats = 2

// poll is the session's periodic visit of a started shared channel at now, when the peer's
// session was last heard at lastRecv: it declares the peer dead after Misses intervals of
// silence, and otherwise returns the count to send (ok false: nothing new), the channel's
// interval and its heartbeat timeout (zero: the channel is not started or is over). It
// calls Consumed on the session's goroutine.
func (ch *Channel) poll(now, lastRecv time.Time) (value uint64, ok bool, interval, dead time.Duration) {
	ch.mu.Lock()
	if !ch.started || ch.userClosed || ch.deadErr != nil || ch.closeCalled {
		ch.mu.Unlock()
		return 0, false, 0, 0
	}
	interval, dead = ch.interval, ch.interval*time.Duration(ch.misses)
	if silence := now.Sub(lastRecv); silence >= dead {
		err := &HeartbeatTimeoutError{Silence: silence, Interval: ch.interval, Misses: ch.misses}
		ch.mu.Unlock()
		ch.die(codeDead, err)
		return 0, false, 0, 0
	}
	ch.mu.Unlock()
	var v uint64
	if f := ch.h.Consumed; f != nil {
		v = f()
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if v > ch.sentMax {
		ch.sentMax = v
		ch.repeat = sessionRepeats + 1
	}
	if ch.repeat == 0 {
		return 0, false, interval, dead
	}
	ch.repeat--
	return ch.sentMax, true, interval, dead
}
