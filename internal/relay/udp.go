package relay

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// flow is the UDP traffic of one client address: datagrams from the client
// go to the target from conn, whose replies go back to the client.
type flow struct {
	client netip.AddrPort
	conn   *net.UDPConn // connected to the target
	last   atomic.Int64 // unix nanoseconds of the last datagram forwarded either way
}

func (f *flow) touch() { f.last.Store(time.Now().UnixNano()) }

// udpLoop reads datagrams from clients and sends them on their flows.
func (r *Relay) udpLoop() {
	defer r.wg.Done()
	buf := make([]byte, bufSize)
	for {
		n, from, err := r.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. a truncated datagram; nothing to fix
		}
		st := r.snapshot()
		if st.blackhole || st.blockUDP {
			r.stats.droppd.Add(1)
			continue
		}
		f := r.flowFor(from)
		if f == nil {
			r.stats.droppd.Add(1)
			continue
		}
		f.touch()
		r.sendUDP(st, datagram{up: f.conn, b: buf[:n]})
	}
}

// flowFor returns the flow of client, creating it if needed; nil if the
// flow limit is reached or the upstream socket cannot be opened.
func (r *Relay) flowFor(client netip.AddrPort) *flow {
	r.udpMu.Lock()
	defer r.udpMu.Unlock()
	if f := r.flows[client]; f != nil {
		return f
	}
	if len(r.flows) >= r.cfg.MaxUDPFlows || r.ctx.Err() != nil {
		return nil
	}
	r.mu.Lock()
	target := r.targetUDP
	r.mu.Unlock()
	c, err := net.DialUDP("udp", nil, target)
	if err != nil {
		r.log.Debug("relay: UDP flow failed", "client", client, "err", err)
		return nil
	}
	f := &flow{client: client, conn: c}
	f.touch()
	r.flows[client] = f
	r.wg.Add(1)
	go r.flowLoop(f)
	r.log.Debug("relay: UDP flow open", "client", client, "upstream", c.LocalAddr())
	return f
}

// flowLoop carries a flow's replies back to its client and expires the flow
// when it has been idle for UDPIdleTimeout.
func (r *Relay) flowLoop(f *flow) {
	defer r.wg.Done()
	idle := r.cfg.UDPIdleTimeout
	buf := make([]byte, bufSize)
	for {
		f.conn.SetReadDeadline(time.Unix(0, f.last.Load()).Add(idle))
		n, err := f.conn.Read(buf)
		if err != nil {
			switch {
			case errors.Is(err, net.ErrClosed):
				return
			case errors.Is(err, os.ErrDeadlineExceeded):
				if time.Since(time.Unix(0, f.last.Load())) >= idle {
					r.dropFlow(f)
					r.log.Debug("relay: UDP flow expired", "client", f.client)
					return
				}
			}
			continue // ECONNREFUSED from an ICMP error, and the like
		}
		st := r.snapshot()
		if st.blackhole || st.blockUDP {
			r.stats.droppd.Add(1)
			continue
		}
		f.touch()
		r.sendUDP(st, datagram{to: f.client, b: buf[:n]})
	}
}

// dropFlow removes f and closes its socket (which ends flowLoop).
func (r *Relay) dropFlow(f *flow) {
	r.udpMu.Lock()
	if r.flows[f.client] == f {
		delete(r.flows, f.client)
	}
	r.udpMu.Unlock()
	f.conn.Close()
}

// dropFlows removes and closes every flow.
func (r *Relay) dropFlows() {
	r.udpMu.Lock()
	fs := r.flows
	r.flows = make(map[netip.AddrPort]*flow)
	r.udpMu.Unlock()
	for _, f := range fs {
		f.conn.Close()
	}
}

// datagram is a UDP payload on its way: to the target through up, or (when
// up is nil) to client address to through the relay's socket.
type datagram struct {
	up  *net.UDPConn
	to  netip.AddrPort
	b   []byte
	due time.Time
}

// delayQueue holds delayed datagrams in FIFO order. The head is removed only
// after it has been sent, so an empty queue means nothing is in flight and a
// datagram may be sent directly without overtaking a delayed one.
type delayQueue struct {
	mu    sync.Mutex
	items []datagram
	bytes int
	limit int
	wake  chan struct{} // capacity 1: the queue became non-empty
}

func (q *delayQueue) init(limit int) {
	q.limit = limit
	q.wake = make(chan struct{}, 1)
}

// sendUDP sends d now, or queues it when a delay is set or earlier datagrams
// are still queued. d.b is copied if queued.
func (r *Relay) sendUDP(st state, d datagram) {
	q := &r.q
	q.mu.Lock()
	if st.delay == 0 && len(q.items) == 0 {
		q.mu.Unlock()
		r.writeUDP(d)
		return
	}
	if q.bytes+len(d.b) > q.limit {
		q.mu.Unlock()
		r.stats.droppd.Add(1)
		return
	}
	d.b = append([]byte(nil), d.b...)
	d.due = time.Now().Add(st.delay)
	q.items = append(q.items, d)
	q.bytes += len(d.b)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// delayLoop sends queued datagrams when they are due, unless UDP is blocked
// by then.
func (r *Relay) delayLoop() {
	defer r.wg.Done()
	q := &r.q
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		q.mu.Lock()
		if len(q.items) == 0 {
			q.mu.Unlock()
			select {
			case <-q.wake:
				continue
			case <-r.ctx.Done():
				return
			}
		}
		d := q.items[0]
		q.mu.Unlock()
		if wait := time.Until(d.due); wait > 0 {
			t.Reset(wait)
			select {
			case <-t.C:
			case <-r.ctx.Done():
				return
			}
		}
		if st := r.snapshot(); st.blackhole || st.blockUDP {
			r.stats.droppd.Add(1)
		} else {
			r.writeUDP(d)
		}
		q.mu.Lock()
		q.items[0] = datagram{}
		q.items = q.items[1:]
		q.bytes -= len(d.b)
		q.mu.Unlock()
	}
}

// writeUDP sends d and counts it.
func (r *Relay) writeUDP(d datagram) {
	var err error
	if d.up != nil {
		_, err = d.up.Write(d.b)
	} else {
		_, err = r.pc.WriteToUDPAddrPort(d.b, d.to)
	}
	switch {
	case err != nil:
		r.stats.droppd.Add(1)
	case d.up != nil:
		r.stats.datagramsUp.Add(1)
	default:
		r.stats.datagramsDown.Add(1)
	}
}
