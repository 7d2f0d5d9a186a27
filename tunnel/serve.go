package tunnel

import (
	"errors"
	"fmt"
	"net"
	"sync"
)

// Acceptor accepts connections (rocks) from a listener and runs a Server
// on each, so `rockudp tunnel server` is a listener and one call. Each
// connection is a tunnel of its own: a failing one (malformed frames, a
// rock that times out) ends alone.
type Acceptor struct {
	l   net.Listener
	to  *net.UDPAddr
	cfg *Config

	mu      sync.Mutex
	servers map[*Server]struct{}
	ended   Stats // counters of the servers that have ended
	closed  bool

	wg   sync.WaitGroup
	done chan struct{}
	err  error // why the accept loop ended; set before done is closed
}

// Serve runs a Server, sending to the UDP address to ("host:port",
// resolved once, now), for every connection l accepts (use a
// *tcprocks.Listener for rocks). cfg applies to every Server. Serve takes
// ownership of l: Close closes it and every tunnel (and so does a failing
// Serve).
func Serve(l net.Listener, to string, cfg *Config) (*Acceptor, error) {
	addr, err := net.ResolveUDPAddr("udp", to)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("tunnel: resolving %q: %w", to, err)
	}
	a := &Acceptor{l: l, to: addr, cfg: cfg, servers: make(map[*Server]struct{}), done: make(chan struct{})}
	a.wg.Add(1)
	go a.acceptLoop()
	return a, nil
}

func (a *Acceptor) acceptLoop() {
	defer a.wg.Done()
	defer close(a.done)
	log := a.cfg.withDefaults().Logger
	for {
		conn, err := a.l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Warn("tunnel: accept failed; no new tunnels", "err", err)
			}
			a.err = fmt.Errorf("tunnel: accept: %w", err)
			return
		}
		sv := newServer(conn, a.to, a.cfg)
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			sv.Close()
			continue
		}
		a.servers[sv] = struct{}{}
		a.wg.Add(1)
		a.mu.Unlock()
		log.Debug("tunnel: new tunnel", "peer", conn.RemoteAddr())
		go a.watch(sv)
	}
}

// watch forgets sv when it ends, keeping its counters.
func (a *Acceptor) watch(sv *Server) {
	defer a.wg.Done()
	<-sv.Done()
	sv.Close() // waits for its goroutines
	st := sv.Stats()
	a.mu.Lock()
	delete(a.servers, sv)
	a.ended.add(st)
	a.mu.Unlock()
}

// Addr returns the listener's address.
func (a *Acceptor) Addr() net.Addr { return a.l.Addr() }

// Tunnels returns the number of tunnels running now.
func (a *Acceptor) Tunnels() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.servers)
}

// Stats returns the sum of the counters of every tunnel, running or ended.
func (a *Acceptor) Stats() Stats {
	a.mu.Lock()
	st := a.ended
	live := make([]*Server, 0, len(a.servers))
	for sv := range a.servers {
		live = append(live, sv)
	}
	a.mu.Unlock()
	for _, sv := range live {
		st.add(sv.Stats())
	}
	return st
}

// Done is closed when the acceptor stops accepting (after Close, or when
// the listener fails).
func (a *Acceptor) Done() <-chan struct{} { return a.done }

// Err returns why the acceptor stopped accepting, or nil while it accepts.
func (a *Acceptor) Err() error {
	select {
	case <-a.done:
		return a.err
	default:
		return nil
	}
}

// Close closes the listener and every tunnel, and waits for them. It is
// idempotent.
func (a *Acceptor) Close() error {
	a.mu.Lock()
	first := !a.closed
	a.closed = true
	live := make([]*Server, 0, len(a.servers))
	for sv := range a.servers {
		live = append(live, sv)
	}
	a.mu.Unlock()
	if first {
		a.l.Close()
	}
	for _, sv := range live {
		sv.Close()
	}
	a.wg.Wait()
	return nil
}

// add adds o's counters and current values to s.
func (s *Stats) add(o Stats) {
	s.DatagramsIn += o.DatagramsIn
	s.BytesIn += o.BytesIn
	s.DatagramsOut += o.DatagramsOut
	s.BytesOut += o.BytesOut
	s.Flows += o.Flows
	s.FlowsOpened += o.FlowsOpened
	s.FlowsClosed += o.FlowsClosed
	s.QueuedBytes += o.QueuedBytes
	s.RockWrites += o.RockWrites
	s.RockBytes += o.RockBytes
	for i := range s.Drops {
		s.Drops[i] += o.Drops[i]
		s.DroppedBytes[i] += o.DroppedBytes[i]
	}
}
