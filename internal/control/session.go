package control

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
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

// A session is one QUIC connection between a Client and a Server that carries the control
// channels of every rock between them: channels are numbered, bound one by one with their
// rock's key (FrameBind, FrameBindOK), share the session's one bidirectional stream for their
// control messages and send their heartbeats in batches, one datagram for up to
// MaxBatchEntries channels. Ten thousand idle rocks between two processes thus cost one QUIC
// connection and about ten datagrams a second each way per thousand rocks, instead of ten
// thousand connections.
//
// Each channel sees its session through a vlink, which gives it the link the Channel code
// expects. The session runs three goroutines: the stream reader, the datagram reader and the
// stream writer (which writes whole frames only, so a cancelled Send never cuts the shared
// stream).

// batchDelay is how long a heartbeat waits for others to share its datagram.
const batchDelay = 5 * time.Millisecond

// vlinkQueueLen bounds a channel's received heartbeats (more are dropped, like datagrams) and
// its received control messages (more wait, see pushMessage).
const vlinkQueueLen = 16

var errSessionClosed = fmt.Errorf("control: session closed: %w", net.ErrClosed)

// bindMAC is HMAC-SHA256(key, label || exporter || channel number).
func bindMAC(key []byte, label string, ekm []byte, num uint32) [MACLen]byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	m.Write(ekm)
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], num)
	m.Write(n[:])
	var out [MACLen]byte
	m.Sum(out[:0])
	return out
}

// bindAnswer is the server's answer to a client's FrameBind.
type bindAnswer struct {
	link *vlink // FrameBindOK: the channel's link, already registered
	mac  [MACLen]byte
	code quic.ApplicationErrorCode // FrameRefuse
	err  error                     // the session ended
}

// outFrame is a frame waiting for the session's writer.
type outFrame struct {
	b     []byte
	done  chan error   // nil: nobody waits
	state atomic.Int32 // 0 queued, 1 being written, 2 abandoned
}

type session struct {
	conn   *quic.Conn
	str    *quic.Stream
	ekm    []byte
	log    *slog.Logger
	idle   time.Duration
	client bool
	srv    *Server // server side
	cli    *Client // client side
	addr   string  // client side: key in cli.sessions
	wg     *sync.WaitGroup

	wake    chan struct{} // the writer has frames
	hbTimer *time.Timer   // flushes the heartbeat batch

	tickTimer *time.Timer // runs tick
	ticking   atomic.Bool
	lastRecv  atomic.Int64 // Unix nanoseconds of the last datagram from the peer
	dgramsIn  atomic.Int64 // datagrams received (tests)
	mute      atomic.Bool  // tests: send no periodic datagram, as a frozen peer

	mu       sync.Mutex
	links    map[uint32]*vlink
	pending  map[uint32]chan bindAnswer // client: binds waiting for their answer
	next     uint32                     // client: next channel number
	queue    []*outFrame
	hb       []byte // heartbeat batch being filled
	hbArmed  bool
	ended    bool
	endErr   error
	hasToken bool          // server: holds a MaxPending token until its first channel is bound
	period   time.Duration // interval of the next tick
	scratch  []*vlink      // tick's list of channels
}

func newSession(conn *quic.Conn, str *quic.Stream, ekm []byte, log *slog.Logger, idle time.Duration) *session {
	s := &session{
		conn:    conn,
		str:     str,
		ekm:     ekm,
		log:     log,
		idle:    idle,
		wake:    make(chan struct{}, 1),
		links:   make(map[uint32]*vlink),
		pending: make(map[uint32]chan bindAnswer),
	}
	s.hbTimer = time.AfterFunc(time.Hour, s.flushHeartbeats)
	s.hbTimer.Stop()
	s.lastRecv.Store(time.Now().UnixNano())
	s.period = DefaultInterval
	s.tickTimer = time.AfterFunc(DefaultInterval, s.tick)
	return s
}

// start runs the session's goroutines on wg.
func (s *session) start(wg *sync.WaitGroup) {
	s.wg = wg
	wg.Go(s.readStream)
	wg.Go(s.readDatagrams)
	wg.Go(s.write)
}

// end marks the session over because of cause: every channel's link and every pending bind
// ends with it, and the QUIC connection is closed (code, unless it is already).
func (s *session) end(code quic.ApplicationErrorCode, cause error) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended, s.endErr = true, cause
	links := s.links
	s.links = map[uint32]*vlink{}
	pending := s.pending
	s.pending = map[uint32]chan bindAnswer{}
	token := s.hasToken
	s.hasToken = false
	s.queue = nil
	s.mu.Unlock()
	s.hbTimer.Stop()
	s.tickTimer.Stop()
	s.conn.CloseWithError(code, cause.Error())
	for _, l := range links {
		l.ended(cause)
	}
	for _, p := range pending {
		p <- bindAnswer{err: cause}
	}
	if token {
		<-s.srv.pending
	}
	if s.cli != nil {
		s.cli.forget(s)
	}
	if s.srv != nil {
		s.srv.forget(s)
	}
}

// connCause is why the QUIC connection ended (after its context is done).
func (s *session) connCause() error { return context.Cause(s.conn.Context()) }

// fail ends the session after a protocol violation (or a local error) err.
func (s *session) fail(code quic.ApplicationErrorCode, err error) {
	s.log.Debug("control: session failed", "remote", s.conn.RemoteAddr(), "err", err)
	s.end(code, err)
}

// enqueue queues a frame for the writer; done (if not nil) gets the write's result.
func (s *session) enqueue(b []byte, done chan error) *outFrame {
	f := &outFrame{b: b, done: done}
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		if done != nil {
			done <- errSessionClosed
		}
		return f
	}
	s.queue = append(s.queue, f)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return f
}

func frame(typ byte, num uint32, body ...[]byte) []byte {
	n := 0
	for _, b := range body {
		n += len(b)
	}
	f := AppendSessionFrameHeader(make([]byte, 0, SessionFrameHeaderLen+n), typ, num, n)
	for _, b := range body {
		f = append(f, b...)
	}
	return f
}

// write is the stream writer: it writes queued frames whole, in order.
func (s *session) write() {
	ctx := s.conn.Context()
	for {
		select {
		case <-s.wake:
		case <-ctx.Done():
			return
		}
		for {
			s.mu.Lock()
			q := s.queue
			s.queue = nil
			s.mu.Unlock()
			if len(q) == 0 {
				break
			}
			for _, f := range q {
				if !f.state.CompareAndSwap(0, 1) {
					continue // abandoned by its sender
				}
				_, err := s.str.Write(f.b)
				if f.done != nil {
					f.done <- err
				}
				if err != nil {
					s.end(codeClosed, s.streamErr(err))
					return
				}
			}
		}
	}
}

// streamErr is the session's end cause after a stream error.
func (s *session) streamErr(err error) error {
	if c := s.connCause(); c != nil {
		return c
	}
	return fmt.Errorf("control: control stream: %w", err)
}

// readStream reads session frames and dispatches them.
func (s *session) readStream() {
	var hdr [SessionFrameHeaderLen]byte
	for {
		if _, err := io.ReadFull(s.str, hdr[:]); err != nil {
			s.readFailed(err)
			return
		}
		typ, num, n, err := ParseSessionFrameHeader(hdr[:])
		if err != nil {
			s.fail(codeProtocol, err)
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(s.str, body); err != nil {
			s.readFailed(err)
			return
		}
		if err := s.handle(typ, num, body); err != nil {
			s.fail(codeProtocol, err)
			return
		}
	}
}

func (s *session) readFailed(err error) {
	var reset *quic.StreamError
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		s.fail(codeProtocol, errors.New("control: control stream: peer closed the control stream"))
	case errors.As(err, &reset):
		s.fail(codeProtocol, fmt.Errorf("control: control stream: %w", err))
	default: // the connection is ending: report its own cause
		select {
		case <-s.conn.Context().Done():
		case <-time.After(time.Second):
		}
		if c := s.connCause(); c != nil {
			err = c
		}
		s.end(codeClosed, err)
	}
}

func (s *session) handle(typ byte, num uint32, body []byte) error {
	switch {
	case typ == FrameMsg:
		if l := s.link(num); l != nil {
			l.pushMessage(body)
		}
	case typ == FrameChClose:
		code, reason, err := ParseCloseBody(body)
		if err != nil {
			return err
		}
		s.mu.Lock()
		l := s.links[num]
		delete(s.links, num)
		s.mu.Unlock()
		if l != nil {
			l.ended(&quic.ApplicationError{Remote: true, ErrorCode: quic.ApplicationErrorCode(code), ErrorMessage: reason})
		}
	case typ == FrameBind && !s.client:
		s.serverBind(num, body)
	case (typ == FrameBindOK || typ == FrameRefuse) && s.client:
		s.mu.Lock()
		p := s.pending[num]
		delete(s.pending, num)
		var a bindAnswer
		if typ == FrameBindOK {
			copy(a.mac[:], body)
			if p != nil {
				a.link = s.newLinkLocked(num)
			}
		} else {
			a.code = quic.ApplicationErrorCode(body[0])
		}
		s.mu.Unlock()
		if p == nil {
			if typ == FrameBindOK { // its Dial gave up: end the channel at the server
				s.enqueue(frame(FrameChClose, num, AppendCloseBody(nil, uint64(codeClosed), "abandoned")), nil)
			}
			return nil
		}
		p <- a
	default:
		return parseError("session frame", ErrBadFrame)
	}
	return nil
}

// serverBind verifies a client's FrameBind and answers it.
func (s *session) serverBind(num uint32, body []byte) {
	var id ID
	copy(id[:], body[:16])
	var key []byte
	ok := false
	if s.srv.cfg.Key != nil {
		key, ok = s.srv.cfg.Key(id)
	}
	refuse := func(why string) {
		s.log.Debug("control: channel refused", "remote", s.conn.RemoteAddr(), "id", id, "why", why)
		s.enqueue(frame(FrameRefuse, num, []byte{byte(codeRefused)}), nil)
	}
	if !ok {
		refuse("unknown id")
		return
	}
	want := bindMAC(key, labelClient, s.ekm, num)
	if !hmac.Equal(body[16:], want[:]) {
		refuse("wrong client proof")
		return
	}
	s.mu.Lock()
	if _, used := s.links[num]; used || s.ended {
		s.mu.Unlock()
		refuse("channel number in use")
		return
	}
	l := s.newLinkLocked(num)
	token := s.hasToken
	s.hasToken = false
	s.mu.Unlock()
	if token {
		<-s.srv.pending
	}
	mac := bindMAC(key, labelServer, s.ekm, num)
	s.enqueue(frame(FrameBindOK, num, mac[:]), nil)
	s.srv.offer(newChannel(id, l, s.log, s.idle))
}

// bind (client) binds a new channel of rock id with key on the session.
func (s *session) bind(ctx context.Context, id ID, key []byte) (*Channel, error) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return nil, errSessionClosed
	}
	num := s.next
	s.next++
	res := make(chan bindAnswer, 1)
	s.pending[num] = res
	s.mu.Unlock()
	mac := bindMAC(key, labelClient, s.ekm, num)
	s.enqueue(frame(FrameBind, num, id[:], mac[:]), nil)
	var a bindAnswer
	select {
	case a = <-res:
	case <-ctx.Done():
		s.mu.Lock()
		_, still := s.pending[num]
		delete(s.pending, num)
		s.mu.Unlock()
		if !still {
			a = <-res // the answer came at the same time
			if a.link != nil {
				a.link.CloseWithError(codeClosed, "abandoned")
			}
		}
		return nil, ctxError("dial "+s.conn.RemoteAddr().String(), ctx)
	}
	switch {
	case a.err != nil:
		return nil, errSessionClosed
	case a.link == nil:
		return nil, fmt.Errorf("%w (code %#x)", ErrRefused, a.code)
	}
	want := bindMAC(key, labelServer, s.ekm, num)
	if !hmac.Equal(a.mac[:], want[:]) {
		a.link.CloseWithError(codeBadProof, "bad proof")
		return nil, ErrBadProof
	}
	return newChannel(id, a.link, s.log, s.idle), nil
}

func (s *session) link(num uint32) *vlink {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.links[num]
}

// newLinkLocked registers the link of channel num. Under mu.
func (s *session) newLinkLocked(num uint32) *vlink {
	ctx, cancel := context.WithCancelCause(context.Background())
	l := &vlink{s: s, num: num, ctx: ctx, cancel: cancel,
		dgrams: make(chan []byte, vlinkQueueLen), msgs: make(chan []byte, vlinkQueueLen)}
	s.links[num] = l
	return l
}

// unlink forgets channel num; a client session without channels ends.
func (s *session) unlink(l *vlink) {
	s.mu.Lock()
	if s.links[l.num] == l {
		delete(s.links, l.num)
	}
	idle := s.client && len(s.links) == 0 && len(s.pending) == 0 && !s.ended
	s.mu.Unlock()
	if idle {
		s.cli.maybeEndIdle(s)
	}
}

// heartbeat adds channel num's heartbeat to the batch, which leaves when it is full or
// batchDelay later.
func (s *session) heartbeat(num uint32, consumed uint64) error {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return errSessionClosed
	}
	if s.hb == nil {
		s.hb = AppendHeartbeatBatchHeader(make([]byte, 0, 1+MaxBatchEntries*BatchEntryLen))
	}
	s.hb = AppendBatchEntry(s.hb, num, consumed)
	var full []byte
	if len(s.hb) == cap(s.hb) {
		full, s.hb = s.hb, nil
	} else if !s.hbArmed {
		s.hbArmed = true
		s.hbTimer.Reset(batchDelay)
	}
	s.mu.Unlock()
	if full != nil {
		return s.conn.SendDatagram(full)
	}
	return nil
}

func (s *session) flushHeartbeats() {
	s.mu.Lock()
	b := s.hb
	s.hb, s.hbArmed = nil, false
	s.mu.Unlock()
	if len(b) > 1 {
		if err := s.conn.SendDatagram(b); err != nil {
			s.log.Debug("control: heartbeats not sent", "remote", s.conn.RemoteAddr(), "err", err)
		}
	}
}

// readDatagrams hands every received heartbeat to its channel.
func (s *session) readDatagrams() {
	ctx := s.conn.Context()
	deliver := func(num uint32, consumed uint64) {
		if l := s.link(num); l != nil {
			select {
			case l.dgrams <- AppendHeartbeat(make([]byte, 0, HeartbeatLen), consumed):
			default: // a full queue drops it, as the network may
			}
		}
	}
	for {
		d, err := s.conn.ReceiveDatagram(ctx)
		if err != nil {
			if c := s.connCause(); c != nil {
				err = c
			}
			s.end(codeClosed, err)
			return
		}
		if err := ParseHeartbeatBatch(d, deliver); err != nil {
			s.fail(codeProtocol, err)
			return
		}
		s.lastRecv.Store(time.Now().UnixNano())
		s.dgramsIn.Add(1)
	}
}

// staleAfter is how long a session may go without a datagram from its peer (which sends at
// least one per second) before Dial stops putting new channels on it, and before a session
// without started channels ends.
const staleAfter = DefaultMisses * DefaultInterval

// stale reports whether the peer has been silent for staleAfter at now.
func (s *session) stale(now time.Time) bool {
	return now.Sub(time.Unix(0, s.lastRecv.Load())) >= staleAfter
}

// started tells the session that one of its channels runs with interval: the session's
// datagrams must leave at least that often.
func (s *session) started(interval time.Duration) {
	s.mu.Lock()
	sooner := interval < s.period && !s.ended
	if sooner {
		s.period = interval
	}
	s.mu.Unlock()
	if sooner {
		s.tickTimer.Reset(interval)
	}
}

// tick is the session's heartbeat, run every interval (the shortest of its channels'): it
// sends one datagram to the peer with the counts that changed (several if they do not fit;
// an empty one as a keepalive), and declares dead every channel whose peer session has been
// silent for its Misses intervals.
func (s *session) tick() {
	if !s.ticking.CompareAndSwap(false, true) {
		return // the running tick reschedules
	}
	defer s.ticking.Store(false)
	now := time.Now()
	last := time.Unix(0, s.lastRecv.Load())
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	links := s.scratch[:0]
	for _, l := range s.links {
		links = append(links, l)
	}
	unbound := s.hasToken // the handshake timeout governs it
	s.mu.Unlock()
	var (
		batch       []byte
		sent        bool
		minInterval time.Duration
		minDead     time.Duration
	)
	send := func() {
		if !s.mute.Load() {
			if err := s.conn.SendDatagram(batch); err != nil {
				s.log.Debug("control: heartbeats not sent", "remote", s.conn.RemoteAddr(), "err", err)
			}
		}
		batch, sent = nil, true
	}
	for i, l := range links {
		links[i] = nil
		ch := l.ch.Load()
		if ch == nil {
			continue
		}
		v, ok, interval, dead := ch.poll(now, last)
		if interval > 0 && (minInterval == 0 || interval < minInterval) {
			minInterval = interval
		}
		if dead > 0 && (minDead == 0 || dead < minDead) {
			minDead = dead
		}
		if !ok {
			continue
		}
		if batch == nil {
			batch = AppendHeartbeatBatchHeader(make([]byte, 0, 1+MaxBatchEntries*BatchEntryLen))
		}
		batch = AppendBatchEntry(batch, l.num, v)
		if len(batch) == cap(batch) {
			send()
		}
	}
	if batch != nil || !sent {
		if batch == nil {
			batch = AppendHeartbeatBatchHeader(nil) // keepalive
		}
		send()
	}
	if minDead == 0 && !unbound && s.stale(now) {
		// No channel to declare dead, but nobody at the other end either.
		s.fail(codeDead, &HeartbeatTimeoutError{Silence: now.Sub(last), Interval: DefaultInterval, Misses: DefaultMisses})
		return
	}
	if minInterval == 0 {
		minInterval = DefaultInterval
	}
	next := minInterval
	if minDead > 0 {
		if d := time.Until(last.Add(minDead)); d < next {
			next = max(d, drainGrace)
		}
	}
	s.mu.Lock()
	s.scratch = links[:0]
	s.period = minInterval
	if !s.ended {
		s.tickTimer.Reset(next)
	}
	s.mu.Unlock()
}

// vlink is one channel's view of its session.
type vlink struct {
	ch     atomic.Pointer[Channel]
	s      *session
	num    uint32
	ctx    context.Context
	cancel context.CancelCauseFunc
	dgrams chan []byte
	msgs   chan []byte
	once   sync.Once
}

func (l *vlink) LocalAddr() net.Addr      { return l.s.conn.LocalAddr() }
func (l *vlink) RemoteAddr() net.Addr     { return l.s.conn.RemoteAddr() }
func (l *vlink) Context() context.Context { return l.ctx }
func (l *vlink) closedErr() error         { return fmt.Errorf("%w: %w", net.ErrClosed, context.Cause(l.ctx)) }

// ended ends the link with cause (the session ended, or the peer closed the channel).
func (l *vlink) ended(cause error) {
	l.once.Do(func() { l.cancel(cause) })
	l.s.unlink(l)
}

// CloseWithError ends the channel and tells the peer.
func (l *vlink) CloseWithError(code quic.ApplicationErrorCode, reason string) error {
	l.once.Do(func() {
		l.s.enqueue(frame(FrameChClose, l.num, AppendCloseBody(nil, uint64(code), reason)), nil)
		l.cancel(&quic.ApplicationError{ErrorCode: code, ErrorMessage: reason})
	})
	l.s.unlink(l)
	return nil
}

func (l *vlink) SendDatagram(d []byte) error {
	v, _, err := ParseHeartbeat(d)
	if err != nil {
		return err
	}
	return l.s.heartbeat(l.num, v)
}

func (l *vlink) ReceiveDatagram(ctx context.Context) ([]byte, error) {
	return receiveQueued(ctx, l.dgrams, l.ctx, l.closedErr)
}

// writeFrame queues the message for the session's writer and waits until it is written or
// ctx ends (the frame is then dropped if not yet begun, or finishes on its own: the shared
// stream is never cut).
func (l *vlink) writeFrame(ctx context.Context, f []byte) (int, error) {
	if l.ctx.Err() != nil {
		return 0, l.closedErr()
	}
	done := make(chan error, 1)
	of := l.s.enqueue(frame(FrameMsg, l.num, f[MessageHeaderLen:]), done)
	select {
	case err := <-done:
		if err != nil {
			return 0, fmt.Errorf("%w: %w", net.ErrClosed, err)
		}
		return len(f), nil
	case <-l.ctx.Done():
		of.state.CompareAndSwap(0, 2)
		return 0, l.closedErr()
	case <-ctx.Done():
		of.state.CompareAndSwap(0, 2)
		return 0, ctx.Err()
	}
}

// pushMessage queues m for the channel's reader. A full queue blocks the session's stream
// reader until the channel's callbacks catch up, which pushes back on the peer through QUIC
// flow control, as a stream of its own would; heartbeats, on datagrams, are not held up.
func (l *vlink) pushMessage(m []byte) {
	select {
	case l.msgs <- m:
	case <-l.ctx.Done():
	case <-l.s.conn.Context().Done():
	}
}

func (l *vlink) readMessage() ([]byte, error) {
	select {
	case m := <-l.msgs:
		return m, nil
	case <-l.ctx.Done():
		select {
		case m := <-l.msgs: // received before the end: still delivered
			return m, nil
		default:
		}
		return nil, l.closedErr()
	}
}
