package tunnel

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Server is the far end of a tunnel: for each flow the client opens it
// sends the flow's datagrams to one UDP address (the --to service) from a
// UDP socket of the flow's own, so the service's replies come back on that
// socket and go to the right source at the client.
//
// A Server owns its rock and closes it when it ends: after Close, when the
// rock fails for good or when the peer sends a malformed frame (Done is
// closed then and Err says why). Other tunnels are unaffected.
type Server struct {
	s  *session
	to *net.UDPAddr

	mu       sync.Mutex // guards the fields below; taken after s.q.mu when both are
	flowsBy  map[uint32]*serverFlow
	lastOpen uint32
	down     bool

	pool sync.Pool // *readBatch, shared by the flow readers
}

// serverFlow is a flow's socket, connected to Server.to; its route sends
// on it.
type serverFlow struct {
	route
	id   uint32
	conn *net.UDPConn
	raw  syscall.RawConn
}

// NewServer starts a tunnel server over rw (a *tcprocks.Conn, or any
// reliable byte stream whose other end is a Client) that sends every flow's
// datagrams to the UDP address to ("host:port", resolved once, now). It
// takes ownership of rw; if to does not resolve, rw is closed.
func NewServer(rw io.ReadWriteCloser, to string, cfg *Config) (*Server, error) {
	if rw == nil {
		return nil, errors.New("tunnel: NewServer needs a rock")
	}
	addr, err := net.ResolveUDPAddr("udp", to)
	if err != nil {
		rw.Close()
		return nil, fmt.Errorf("tunnel: resolving %q: %w", to, err)
	}
	return newServer(rw, addr, cfg), nil
}

// NewServerAddr is NewServer with an already resolved address.
func NewServerAddr(rw io.ReadWriteCloser, to *net.UDPAddr, cfg *Config) (*Server, error) {
	if rw == nil || to == nil {
		return nil, errors.New("tunnel: NewServerAddr needs a rock and an address")
	}
	return newServer(rw, to, cfg), nil
}

func newServer(rw io.ReadWriteCloser, to *net.UDPAddr, cfg *Config) *Server {
	sv := &Server{
		s:       newSession(rw, cfg.withDefaults()),
		to:      to,
		flowsBy: make(map[uint32]*serverFlow),
	}
	sv.pool.New = func() any { return newReadBatch(sv.s.cfg.BatchSize, false) }
	sv.s.start(sv)
	return sv
}

// To returns the address the server sends datagrams to.
func (sv *Server) To() *net.UDPAddr { return sv.to }

// Stats returns a snapshot of the server's counters.
func (sv *Server) Stats() Stats { return sv.s.stats() }

// Done is closed when the tunnel has ended.
func (sv *Server) Done() <-chan struct{} { return sv.s.done }

// Err returns why the tunnel ended (ErrClosed after Close), or nil while it
// runs.
func (sv *Server) Err() error { return sv.s.cause() }

// Close ends the tunnel: it closes the rock and every flow's socket and
// waits for the server's goroutines. Datagrams still queued for the rock
// are dropped. It is idempotent.
func (sv *Server) Close() error { return sv.s.close() }

func (sv *Server) route(id uint32) *route {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if fl := sv.flowsBy[id]; fl != nil {
		return &fl.route
	}
	return nil
}

func (sv *Server) closeFlow(id uint32, _ CloseReason) {
	sv.mu.Lock()
	fl := sv.flowsBy[id]
	if fl != nil {
		sv.removeLocked(fl)
	}
	sv.mu.Unlock()
	if fl != nil {
		sv.s.out.flush() // its datagrams go out before its socket closes
		fl.conn.Close()
	}
}

// open opens flow id: a new UDP socket connected to sv.to and its reader.
func (sv *Server) open(id uint32, now int64) error {
	sv.mu.Lock()
	if id <= sv.lastOpen {
		sv.mu.Unlock()
		return malformed("open of flow %d after flow %d", id, sv.lastOpen)
	}
	sv.lastOpen = id
	full := len(sv.flowsBy) >= sv.s.cfg.MaxFlows
	sv.mu.Unlock()
	if full {
		sv.s.st.drop(DropFlowLimit, 0)
		sv.refuse(id, CloseFlowLimit)
		return nil
	}
	fl, err := sv.dial(id)
	if err != nil {
		sv.s.log.Warn("tunnel: cannot open a flow", "flow", id, "to", sv.to, "err", err)
		sv.refuse(id, CloseError)
		return nil
	}
	fl.last.Store(now)
	sv.mu.Lock()
	if sv.down {
		sv.mu.Unlock()
		fl.conn.Close()
		return nil
	}
	sv.flowsBy[id] = fl
	sv.s.wg.Add(1)
	sv.mu.Unlock()
	sv.s.st.flowsOpened.Add(1)
	sv.s.log.Debug("tunnel: flow opened", "flow", id, "local", fl.conn.LocalAddr())
	go sv.readFlow(fl)
	return nil
}

func (sv *Server) dial(id uint32) (*serverFlow, error) {
	conn, err := net.DialUDP("udp", nil, sv.to)
	if err != nil {
		return nil, err
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, err
	}
	setBuffers(conn, sv.s.cfg.SocketBuffer)
	fl := &serverFlow{id: id, conn: conn, raw: raw}
	if sv.to.IP.To4() != nil {
		fl.pc = ipv4.NewPacketConn(conn)
	} else {
		fl.pc = ipv6.NewPacketConn(conn)
	}
	return fl, nil
}

// refuse tells the client that flow id is closed.
func (sv *Server) refuse(id uint32, r CloseReason) {
	sv.s.q.mu.Lock()
	sv.s.q.appendControl(AppendClose(nil, id, r))
	sv.s.q.mu.Unlock()
	sv.s.q.signal()
}

func (sv *Server) removeLocked(fl *serverFlow) {
	delete(sv.flowsBy, fl.id)
	sv.s.st.flowsClosed.Add(1)
}

// readFlow reads the replies of one flow and queues them for the rock. It
// waits for a datagram before it takes read buffers from the shared pool,
// so idle flows hold none.
func (sv *Server) readFlow(fl *serverFlow) {
	defer sv.s.wg.Done()
	id := fl.id
	flowOf := func(*ipv4.Message, int, int64) (uint32, DropReason) { return id, 0 }
	for {
		if err := waitReadable(fl.raw); err != nil {
			return
		}
		rb := sv.pool.Get().(*readBatch)
		n, err := fl.pc.ReadBatch(rb.ms, 0)
		if err != nil {
			sv.pool.Put(rb)
			if errors.Is(err, syscall.ECONNREFUSED) {
				// An ICMP error for an earlier datagram (the service is
				// not listening yet); nothing to do.
				continue
			}
			if !errors.Is(err, net.ErrClosed) {
				sv.s.log.Warn("tunnel: reading a flow's socket; no more replies on it", "flow", id, "err", err)
			}
			return
		}
		now := sv.s.now()
		fl.last.Store(now)
		sv.s.enqueue(rb.ms[:n], now, flowOf)
		sv.pool.Put(rb)
	}
}

func (sv *Server) maxSend() int {
	if sv.to.IP.To4() != nil {
		return MaxPayloadIPv4
	}
	return MaxPayload
}

func (sv *Server) expire(now int64) {
	idle := int64(sv.s.cfg.IdleTimeout)
	var closed []*serverFlow
	q := sv.s.q
	q.mu.Lock()
	sv.mu.Lock()
	for _, fl := range sv.flowsBy {
		if now-fl.last.Load() > idle {
			sv.removeLocked(fl)
			q.appendControl(AppendClose(nil, fl.id, CloseIdle))
			closed = append(closed, fl)
		}
	}
	sv.mu.Unlock()
	q.mu.Unlock()
	if len(closed) > 0 {
		q.signal()
		sv.s.log.Debug("tunnel: idle flows closed", "n", len(closed))
	}
	for _, fl := range closed {
		fl.conn.Close()
	}
}

func (sv *Server) flows() int {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	return len(sv.flowsBy)
}

func (sv *Server) shutdown() {
	sv.mu.Lock()
	sv.down = true
	fls := make([]*serverFlow, 0, len(sv.flowsBy))
	for _, fl := range sv.flowsBy {
		fls = append(fls, fl)
		sv.removeLocked(fl)
	}
	sv.mu.Unlock()
	for _, fl := range fls {
		fl.conn.Close()
	}
}
