package tunnel

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Client is the UDP-facing end of a tunnel: it reads datagrams from any
// number of local sources on one UDP socket, gives each source address a
// flow, and carries the datagrams over a rock to a Server, which sends them
// on; replies come back to the source they belong to.
//
// A Client owns its rock and its UDP socket and closes both when it ends:
// after Close, when the rock fails for good or when the peer sends a
// malformed frame (Done is closed then and Err says why).
type Client struct {
	s    *session
	conn *net.UDPConn
	pc   batchConn
	v4   bool // an IPv4 socket (else IPv6, possibly dual-stack)
	wild bool // bound to the unspecified address: replies name their source

	mu     sync.Mutex // guards the fields below; taken after s.q.mu when both are
	bySrc  map[netip.AddrPort]*clientFlow
	byID   map[uint32]*clientFlow
	nextID uint32

	flowOf func(m *ipv4.Message, need int, now int64) (uint32, DropReason) // UDP reader only
}

// clientFlow is a source address. Its route sends replies to the source
// (route.addr, as read) from the client's socket, with, on a wildcard
// socket, packet info making them leave from the address the source sent to
// (route.oob).
type clientFlow struct {
	route
	id  uint32
	src netip.AddrPort
}

// NewClient starts a tunnel client over rw (a *tcprocks.Conn, or any
// reliable byte stream whose other end is a Server) that serves the local
// UDP socket conn. It takes ownership of both (and closes both if it
// fails).
func NewClient(rw io.ReadWriteCloser, conn *net.UDPConn, cfg *Config) (*Client, error) {
	if rw == nil || conn == nil {
		return nil, errors.New("tunnel: NewClient needs a rock and a UDP socket")
	}
	c := &Client{
		s:     newSession(rw, cfg.withDefaults()),
		conn:  conn,
		bySrc: make(map[netip.AddrPort]*clientFlow),
		byID:  make(map[uint32]*clientFlow),
	}
	c.flowOf = c.flowFor
	la, _ := conn.LocalAddr().(*net.UDPAddr)
	if la == nil {
		rw.Close()
		conn.Close()
		return nil, errors.New("tunnel: NewClient needs a bound UDP socket")
	}
	// On a socket bound to a wildcard address, replies must leave from the
	// address each source sent to (a connected UDP source drops others):
	// ask for the destination address of each datagram.
	c.wild = la.IP.IsUnspecified()
	var err error
	if la.IP.To4() != nil {
		p := ipv4.NewPacketConn(conn)
		c.pc, c.v4 = p, true
		if c.wild {
			err = p.SetControlMessage(ipv4.FlagDst, true)
		}
	} else {
		p := ipv6.NewPacketConn(conn)
		c.pc = p
		if c.wild {
			err = p.SetControlMessage(ipv6.FlagDst, true)
		}
	}
	if err != nil {
		rw.Close()
		conn.Close()
		return nil, fmt.Errorf("tunnel: asking for destination addresses: %w", err)
	}
	setBuffers(conn, c.s.cfg.SocketBuffer)
	c.s.start(c)
	c.s.wg.Add(1)
	go c.readUDP()
	return c, nil
}

// LocalAddr returns the address of the client's UDP socket.
func (c *Client) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// Stats returns a snapshot of the client's counters.
func (c *Client) Stats() Stats { return c.s.stats() }

// Done is closed when the tunnel has ended.
func (c *Client) Done() <-chan struct{} { return c.s.done }

// Err returns why the tunnel ended (ErrClosed after Close), or nil while it
// runs.
func (c *Client) Err() error { return c.s.cause() }

// Close ends the tunnel: it closes the rock and the UDP socket and waits for
// the client's goroutines. Datagrams still queued for the rock are dropped
// (what was written to the rock is delivered: its Close is graceful). It is
// idempotent.
func (c *Client) Close() error { return c.s.close() }

// readUDP reads datagrams in batches and queues them for the rock.
func (c *Client) readUDP() {
	defer c.s.wg.Done()
	rb := newReadBatch(c.s.cfg.BatchSize, c.wild)
	for {
		n, err := c.pc.ReadBatch(rb.ms, 0)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				c.s.fail(fmt.Errorf("tunnel: reading UDP: %w", err))
			}
			return
		}
		c.s.enqueue(rb.ms[:n], c.s.now(), c.flowOf)
	}
}

// flowFor returns the flow of m's source, opening it (and queueing its
// Open) if needed; 0 and a reason if the datagram must be dropped.
// Called with s.q.mu held.
func (c *Client) flowFor(m *ipv4.Message, need int, now int64) (uint32, DropReason) {
	ua, _ := m.Addr.(*net.UDPAddr)
	if ua == nil { // not from a UDP socket; cannot happen
		return 0, DropUnknownFlow
	}
	src := addrPort(ua)
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.bySrc[src]; f != nil {
		f.last.Store(now)
		return f.id, 0
	}
	if len(c.bySrc) >= c.s.cfg.MaxFlows || c.nextID == 1<<32-1 {
		return 0, DropFlowLimit
	}
	if !c.s.q.room(HeaderLen+need, now) {
		return 0, DropQueueFull
	}
	c.nextID++
	f := &clientFlow{id: c.nextID, src: src}
	f.pc, f.addr = c.pc, ua
	if c.wild {
		f.oob = c.replyInfo(m.OOB[:m.NN])
	}
	f.last.Store(now)
	c.bySrc[src] = f
	c.byID[f.id] = f
	c.s.q.appendControl(AppendHeader(nil, FrameOpen, f.id, 0, 0))
	c.s.st.flowsOpened.Add(1)
	c.s.log.Debug("tunnel: flow opened", "flow", f.id, "src", src)
	return f.id, 0
}

// replyInfo turns the packet info of a received datagram into the control
// message that sends replies from its destination address. IPv4 (and, on a
// dual-stack socket, IPv4-mapped) addresses need IP_PKTINFO: the kernel
// ignores an IPv6 one naming an IPv4-mapped source.
func (c *Client) replyInfo(oob []byte) []byte {
	var dst net.IP
	if c.v4 {
		var cm ipv4.ControlMessage
		if cm.Parse(oob) == nil {
			dst = cm.Dst
		}
	} else {
		var cm ipv6.ControlMessage
		if cm.Parse(oob) == nil {
			dst = cm.Dst
		}
	}
	switch {
	case dst == nil:
		return nil
	case dst.To4() != nil:
		return (&ipv4.ControlMessage{Src: dst.To4()}).Marshal()
	default:
		return (&ipv6.ControlMessage{Src: dst}).Marshal()
	}
}

// addrPort converts a read address to a map key; IPv4-mapped IPv6
// addresses become IPv4, so a dual-stack socket keys them like IPv4.
func addrPort(ua *net.UDPAddr) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(ua.IP)
	ip = ip.Unmap()
	if ua.Zone != "" {
		ip = ip.WithZone(ua.Zone)
	}
	return netip.AddrPortFrom(ip, uint16(ua.Port))
}

func (c *Client) route(id uint32) *route {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.byID[id]; f != nil {
		return &f.route
	}
	return nil
}

func (c *Client) open(uint32, int64) error { return malformed("open from the server") }

func (c *Client) closeFlow(id uint32, r CloseReason) {
	c.mu.Lock()
	f := c.byID[id]
	if f != nil {
		c.removeLocked(f)
	}
	c.mu.Unlock()
	if f != nil {
		c.s.log.Debug("tunnel: flow closed by the server", "flow", id, "reason", r)
	}
}

func (c *Client) removeLocked(f *clientFlow) {
	delete(c.byID, f.id)
	delete(c.bySrc, f.src)
	c.s.st.flowsClosed.Add(1)
}

func (c *Client) maxSend() int {
	if c.v4 {
		return MaxPayloadIPv4
	}
	return MaxPayload
}

func (c *Client) expire(now int64) {
	idle := int64(c.s.cfg.IdleTimeout)
	q := c.s.q
	q.mu.Lock()
	c.mu.Lock()
	n := 0
	for _, f := range c.byID {
		if now-f.last.Load() > idle {
			c.removeLocked(f)
			q.appendControl(AppendClose(nil, f.id, CloseIdle))
			n++
		}
	}
	c.mu.Unlock()
	q.mu.Unlock()
	if n > 0 {
		q.signal()
		c.s.log.Debug("tunnel: idle flows closed", "n", n)
	}
}

func (c *Client) flows() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.byID)
}

func (c *Client) shutdown() {
	c.conn.Close()
	c.mu.Lock()
	for _, f := range c.byID {
		c.removeLocked(f)
	}
	c.mu.Unlock()
}
