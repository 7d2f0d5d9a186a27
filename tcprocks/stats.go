package tcprocks

import (
	"net"
	"time"

	"github.com/rockudp/rockudp/callbacks"
)

// Stats is a snapshot of a rock, for status displays and metrics.
type Stats struct {
	// ID is the connection ID (zero for a plain TCP Conn).
	ID [16]byte
	// Role says whether this end dialed or accepted the rock.
	Role callbacks.Role
	// State is Connected, Suspended or Closed (as State returns it).
	State State
	// Enhanced is false for a plain TCP Conn; the counters are then zero.
	Enhanced bool
	// LocalAddr and RemoteAddr: RemoteAddr is the last known peer address; LocalAddr is nil
	// while the rock is suspended.
	LocalAddr, RemoteAddr net.Addr
	// BytesSent counts the bytes the application has written; BytesReceived those delivered
	// to its Reads.
	BytesSent, BytesReceived uint64
	// InFlight counts the bytes sent but not yet acknowledged by the peer.
	InFlight uint64
	// Suspensions counts the suspensions since the rock began.
	Suspensions int
	// LastDowntime is the length of the last suspension that ended (zero: none yet).
	LastDowntime time.Duration
	// Established is when the rock was initialised (for an imported rock: when the rock
	// that was exported was).
	Established time.Time
	// PeerName is the locator name the peer announced at init ("" if none).
	PeerName string
}

// Stats returns a snapshot of the rock.
func (c *Conn) Stats() Stats {
	if c.plain != nil {
		return Stats{State: Connected, LocalAddr: c.plain.LocalAddr(), RemoteAddr: c.plain.RemoteAddr()}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := Stats{
		ID: c.id, Role: c.role, State: c.state, Enhanced: true,
		RemoteAddr:    c.raddr,
		BytesSent:     c.sent,
		BytesReceived: c.received,
		InFlight:      c.sent - c.acked,
		Suspensions:   c.suspensions,
		LastDowntime:  c.lastDowntime,
		Established:   c.established,
		PeerName:      c.peerName,
	}
	if c.appClosed {
		st.State = Closed
	}
	if c.state == Connected {
		st.LocalAddr = c.laddr
	}
	return st
}

// PeerName returns the locator name the peer announced at initialisation (its Config.Name),
// or "" if it announced none (and for a plain TCP Conn).
func (c *Conn) PeerName() string { return c.peerName }

// Conns returns the live rocks accepted by l: every rock it keeps, connected or suspended,
// including those not yet returned by Accept and those lingering after Close. Plain TCP
// connections are not included.
func (l *Listener) Conns() []*Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	cs := make([]*Conn, 0, len(l.rocks))
	for _, c := range l.rocks {
		cs = append(cs, c)
	}
	return cs
}
