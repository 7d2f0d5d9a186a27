package tunnel

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// ErrClosed is the cause reported by Err after Close. It wraps net.ErrClosed.
var ErrClosed = fmt.Errorf("tunnel: closed: %w", net.ErrClosed)

// errPeerClosed is the cause when the peer closed the rock (EOF).
var errPeerClosed = fmt.Errorf("tunnel: rock closed by the peer: %w", net.ErrClosed)

// rockReadBuf is the size of the buffer frames are read into: room for
// several largest frames, so a chunk usually holds many small ones.
const rockReadBuf = 4 * MaxFrameLen

// endpoint is what differs between a client and a server: the UDP side.
// The rock reader calls frame and flush from one goroutine.
type endpoint interface {
	// route returns where flow id's datagrams go, nil if it is not open.
	route(id uint32) *route
	// open handles an Open frame from the peer.
	open(id uint32, now int64) error
	// closeFlow handles a Close frame from the peer.
	closeFlow(id uint32, r CloseReason)
	// maxSend is the largest datagram this end can send to its UDP peers.
	maxSend() int
	// expire closes flows idle since before now-IdleTimeout.
	expire(now int64)
	// flows returns the number of open flows.
	flows() int
	// shutdown closes every UDP socket; the endpoint's goroutines then exit.
	shutdown()
}

var (
	_ endpoint  = (*Client)(nil)
	_ endpoint  = (*Server)(nil)
	_ batchConn = (*ipv4.PacketConn)(nil)
	_ batchConn = (*ipv6.PacketConn)(nil)
)

// route is where the datagrams of one flow go, and its idle clock.
type route struct {
	pc   batchConn
	addr net.Addr // nil on a connected socket
	oob  []byte   // control message for each datagram; nil: none
	last atomic.Int64
}

// session is the rock side shared by Client and Server: a reader that
// parses frames, a writer that drains the queue, and a janitor for idle
// flows.
type session struct {
	cfg   Config
	rw    io.ReadWriteCloser
	log   *slog.Logger
	epoch time.Time
	st    counters
	q     *queue
	ep    endpoint
	out   *sender // rock reader only

	peerMaxDatagram atomic.Int64 // from the peer's Hello; MaxPayload until then

	// Reader goroutine only.
	peerMaxAge int64 // ms; 0: keep all
	delay      delayFilter

	done      chan struct{}
	closeOnce sync.Once
	err       error // set before done is closed
	wg        sync.WaitGroup
}

func newSession(rw io.ReadWriteCloser, cfg Config) *session {
	s := &session{
		cfg:   cfg,
		rw:    rw,
		log:   cfg.Logger,
		epoch: time.Now(),
		done:  make(chan struct{}),
	}
	s.q = newQueue(cfg.MaxQueue, int64(cfg.MaxAge), &s.st)
	s.out = newSender(&s.st, cfg.BatchSize)
	s.peerMaxDatagram.Store(MaxPayload)
	return s
}

// start queues the Hello and starts the rock goroutines.
func (s *session) start(ep endpoint) {
	s.ep = ep
	s.q.mu.Lock()
	s.q.appendControl(AppendHello(nil, Hello{Version: Version, MaxAge: s.cfg.MaxAge, MaxDatagram: ep.maxSend()}))
	s.q.mu.Unlock()
	s.q.signal()
	s.wg.Add(3)
	go s.readLoop()
	go s.writeLoop()
	go s.janitor()
}

// now is the session clock in nanoseconds (monotonic).
func (s *session) now() int64 { return int64(time.Since(s.epoch)) }

// fail ends the session with cause: it closes the rock and the UDP sockets.
// Only the first call counts.
func (s *session) fail(cause error) {
	s.closeOnce.Do(func() {
		switch {
		case errors.Is(cause, ErrClosed):
		case errors.Is(cause, errPeerClosed):
			s.log.Debug("tunnel: the peer closed the tunnel")
		case errors.Is(cause, ErrMalformed):
			s.log.Warn("tunnel: bad input from the peer; closing this tunnel's rock", "err", cause)
		default:
			s.log.Warn("tunnel: closing the tunnel after an error", "err", cause)
		}
		s.q.close()
		s.ep.shutdown()
		s.rw.Close()
		s.err = cause
		close(s.done)
	})
}

// close ends the session and waits for its goroutines.
func (s *session) close() error {
	s.fail(ErrClosed)
	s.wg.Wait()
	return nil
}

func (s *session) stats() Stats {
	st := s.st.snapshot()
	st.Flows = s.ep.flows()
	st.QueuedBytes = s.q.queued()
	return st
}

// err returns why the session ended; nil while it runs.
func (s *session) cause() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// writeLoop drains the queue into the rock, one Write per batch.
func (s *session) writeLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.q.ready:
		case <-s.done:
			return
		}
		for {
			out := s.q.take(s.now())
			if out == nil {
				break
			}
			_, err := s.rw.Write(out)
			s.q.release()
			if err != nil {
				s.fail(fmt.Errorf("tunnel: rock write: %w", err))
				return
			}
			s.st.rockWrites.Add(1)
			s.st.rockBytes.Add(uint64(len(out)))
		}
	}
}

// readLoop parses frames from the rock and hands them to the endpoint.
func (s *session) readLoop() {
	defer s.wg.Done()
	buf := make([]byte, rockReadBuf)
	start, end := 0, 0
	hello := false
	for {
		n, err := s.rw.Read(buf[end:])
		end += n
		now := s.now()
		for start < end {
			f, fn, perr := ParseFrame(buf[start:end])
			if errors.Is(perr, ErrTruncated) {
				break
			}
			if perr == nil {
				perr = s.handle(f, now, &hello)
			}
			if perr != nil {
				s.out.flush()
				s.fail(perr)
				return
			}
			start += fn
		}
		s.out.flush()
		if start == end {
			start, end = 0, 0
		} else if len(buf)-end < MaxFrameLen {
			end = copy(buf, buf[start:end])
			start = 0
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errPeerClosed
			} else {
				err = fmt.Errorf("tunnel: rock read: %w", err)
			}
			s.fail(err)
			return
		}
	}
}

// handle checks a frame against the session state and dispatches it.
func (s *session) handle(f Frame, now int64, hello *bool) error {
	if f.Type == FrameHello {
		if *hello {
			return malformed("second hello")
		}
		h, err := ParseHello(f.Payload)
		if err != nil {
			return err
		}
		*hello = true
		s.peerMaxAge = h.MaxAge.Milliseconds()
		s.peerMaxDatagram.Store(int64(h.MaxDatagram))
		s.log.Debug("tunnel: peer hello", "max_age", h.MaxAge, "max_datagram", h.MaxDatagram)
		return nil
	}
	if !*hello {
		return malformed("%v before hello", f.Type)
	}
	switch f.Type {
	case FrameOpen:
		return s.ep.open(f.Flow, now)
	case FrameClose:
		s.ep.closeFlow(f.Flow, CloseReason(f.Payload[0]))
		return nil
	}
	if s.peerMaxAge > 0 && s.delay.extra(now/1e6, f.Time) > s.peerMaxAge {
		s.st.drop(DropStale, len(f.Payload))
		return nil
	}
	r := s.ep.route(f.Flow)
	if r == nil {
		s.st.drop(DropUnknownFlow, len(f.Payload))
		return nil
	}
	r.last.Store(now)
	s.out.add(r.pc, r.addr, r.oob, f.Payload)
	return nil
}

// janitor expires idle flows.
func (s *session) janitor() {
	defer s.wg.Done()
	t := time.NewTicker(max(s.cfg.IdleTimeout/4, 5*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.ep.expire(s.now())
		case <-s.done:
			return
		}
	}
}

// delayFilter estimates how much longer than the fastest recent Data frame
// a frame took to arrive: the delay it picked up in queues and inside a
// suspended rock. The sender stamps frames with its millisecond clock; the
// offset (receiver clock − sender clock) of the fastest frame is the base,
// and a frame's extra delay is its offset minus the base. The base is the
// minimum over the current and the last three minutes that saw frames, so a
// drift between the two clocks cannot accumulate, and a suspension (minutes
// with no frames) does not forget the base.
type delayFilter struct {
	have   bool
	minute int64     // receiver's minute of cur
	cur    uint32    // least offset seen in this minute
	past   [3]uint32 // least offsets of the previous minutes that had frames
	npast  int
}

// extra returns the extra delay in ms of a frame stamped ts that arrives at
// nowMs.
func (d *delayFilter) extra(nowMs int64, ts uint32) int64 {
	o := uint32(nowMs) - ts
	minute := nowMs / 60000
	switch {
	case !d.have:
		d.have, d.minute, d.cur = true, minute, o
	case minute != d.minute:
		copy(d.past[1:], d.past[:])
		d.past[0] = d.cur
		d.npast = min(d.npast+1, len(d.past))
		d.minute, d.cur = minute, o
	case int32(o-d.cur) < 0:
		d.cur = o
	}
	base := d.cur
	for _, p := range d.past[:d.npast] {
		if int32(p-base) < 0 {
			base = p
		}
	}
	return int64(max(int32(o-base), 0))
}

// batchConn is the batch I/O of ipv4.PacketConn and ipv6.PacketConn (their
// Message types are the same type).
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// sender accumulates datagrams for one UDP socket and sends them with
// sendmmsg. It allocates only when it is created.
type sender struct {
	st   *counters
	pc   batchConn
	ms   []ipv4.Message
	bufs [][]byte
	n    int
}

func newSender(st *counters, batch int) *sender {
	sd := &sender{st: st, ms: make([]ipv4.Message, batch), bufs: make([][]byte, batch)}
	for i := range sd.ms {
		sd.ms[i].Buffers = sd.bufs[i : i+1 : i+1]
	}
	return sd
}

// add queues payload for addr (nil on a connected socket) on pc, with
// control message oob (nil: none), flushing first if pc differs from the
// queued datagrams' socket or the batch is full.
func (sd *sender) add(pc batchConn, addr net.Addr, oob, payload []byte) {
	if sd.n > 0 && (pc != sd.pc || sd.n == len(sd.ms)) {
		sd.flush()
	}
	sd.pc = pc
	sd.bufs[sd.n] = payload
	sd.ms[sd.n].Addr = addr
	sd.ms[sd.n].OOB = oob
	sd.n++
}

// flush sends the queued datagrams. A datagram the kernel refuses is counted
// as DropSendError and the rest are still sent.
func (sd *sender) flush() {
	if sd.n == 0 {
		return
	}
	ms := sd.ms[:sd.n]
	var nOut, bOut uint64
	for len(ms) > 0 {
		n, err := sd.pc.WriteBatch(ms, 0)
		for _, m := range ms[:n] {
			nOut++
			bOut += uint64(len(m.Buffers[0]))
		}
		ms = ms[n:]
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				for _, m := range ms {
					sd.st.drop(DropSendError, len(m.Buffers[0]))
				}
				break
			}
			if len(ms) > 0 {
				sd.st.drop(DropSendError, len(ms[0].Buffers[0]))
				ms = ms[1:]
			}
		} else if n == 0 {
			break
		}
	}
	sd.st.datagramsOut.Add(nOut)
	sd.st.bytesOut.Add(bOut)
	for i := range sd.n {
		sd.bufs[i] = nil
		sd.ms[i].Addr = nil
		sd.ms[i].OOB = nil
	}
	sd.n = 0
	sd.pc = nil
}

// readSlot is the size of each datagram read buffer: one more than the
// largest UDP payload, so a datagram can never be truncated.
const readSlot = MaxPayload + 1

// oobSlot is the control-message buffer of each read slot that asks for
// the destination address (IPv6 packet info is the larger).
const oobSlot = 64

// readBatch is a set of recvmmsg buffers.
type readBatch struct {
	ms []ipv4.Message
}

// newReadBatch makes n read slots, with control-message buffers if oob.
func newReadBatch(n int, oob bool) *readBatch {
	rb := &readBatch{ms: make([]ipv4.Message, n)}
	mem := make([]byte, n*readSlot)
	var oobMem []byte
	if oob {
		oobMem = make([]byte, n*oobSlot)
	}
	for i := range rb.ms {
		rb.ms[i].Buffers = [][]byte{mem[i*readSlot : (i+1)*readSlot : (i+1)*readSlot]}
		if oob {
			rb.ms[i].OOB = oobMem[i*oobSlot : (i+1)*oobSlot : (i+1)*oobSlot]
		}
	}
	return rb
}

// enqueue frames the datagrams ms read at now. flowOf returns each one's
// flow id (and may queue an Open), or 0 and why to drop it. q.mu is taken
// once for the batch.
func (s *session) enqueue(ms []ipv4.Message, now int64, flowOf func(m *ipv4.Message, need int, now int64) (uint32, DropReason)) {
	var nIn, bIn uint64
	peerMax := int(s.peerMaxDatagram.Load())
	q := s.q
	q.mu.Lock()
	for i := range ms {
		m := &ms[i]
		nIn++
		bIn += uint64(m.N)
		if m.Flags&msgTrunc != 0 || m.N > peerMax {
			s.st.drop(DropTooBig, m.N)
			continue
		}
		id, why := flowOf(m, HeaderLen+m.N, now)
		if id == 0 {
			s.st.drop(why, m.N)
			continue
		}
		if !q.room(HeaderLen+m.N, now) {
			s.st.drop(DropQueueFull, m.N)
			continue
		}
		q.appendData(id, now, m.Buffers[0][:m.N])
	}
	q.mu.Unlock()
	s.st.datagramsIn.Add(nIn)
	s.st.bytesIn.Add(bIn)
	q.signal()
}

// setBuffers applies Config.SocketBuffer to c, best effort.
func setBuffers(c *net.UDPConn, size int) {
	if size > 0 {
		_ = c.SetReadBuffer(size)
		_ = c.SetWriteBuffer(size)
	}
}
