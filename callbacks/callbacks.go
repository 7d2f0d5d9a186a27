// Package callbacks holds the types of the rocks expanded API (RE-API): the policy a rock follows
// while its connection is suspended, the events it reports, and the hooks a mobile-aware
// application plugs in (an event handler, a peer locator and an authenticator).
//
// The package does no I/O. Package tcprocks consumes these types through its Config and through
// methods on a live *tcprocks.Conn (SetPolicy, Subscribe, SetAlternates, Suspend).
package callbacks

import (
	"context"
	"fmt"
	"net"
	"time"
)

// Defaults used for zero Policy fields.
const (
	DefaultHeartbeatInterval = time.Second
	DefaultMissedHeartbeats  = 3
	DefaultReconnectTimeout  = 72 * time.Hour
	DefaultRefusalGrace      = time.Minute
	DefaultBackoffInitial    = 50 * time.Millisecond
	DefaultBackoffMax        = 30 * time.Second
	// DefaultFastRetryPeriod is how long after a suspension the backoff is capped at
	// FastRetryMax, so that a short outage is noticed within a second of its end.
	DefaultFastRetryPeriod = time.Minute
	// FastRetryMax is the largest pause between attempts during the fast retry period.
	FastRetryMax = time.Second
)

// NoTimeout as Policy.ReconnectTimeout disables the reconnect timeout: a suspended rock keeps
// trying to reconnect until it is closed.
const NoTimeout time.Duration = -1

// Policy is how a rock detects failures and how long and how often it tries to reconnect.
// The zero value of every field selects its default. A Policy can be changed on a live rock
// (tcprocks.Conn.SetPolicy); the change applies from the next heartbeat or reconnection attempt.
type Policy struct {
	// HeartbeatInterval is the pause between heartbeats on the control channel. Default 1 s.
	HeartbeatInterval time.Duration
	// MissedHeartbeats is how many heartbeat intervals may pass without a heartbeat from the
	// peer before the rock suspends. Default 3.
	MissedHeartbeats int
	// ReconnectTimeout is how long a rock stays suspended before it closes with
	// tcprocks.ErrReconnectTimeout. Default 72 h; NoTimeout (any negative value) disables it.
	ReconnectTimeout time.Duration
	// BackoffInitial is the pause after the first failed reconnection attempt; it doubles after
	// each further failure. Default 50 ms.
	BackoffInitial time.Duration
	// BackoffMax caps the pause between attempts. Default 30 s. During the first minute of a
	// suspension the pause never exceeds 1 s whatever this says.
	BackoffMax time.Duration
	// RefusalGrace is how long a rock keeps trying while every address it knows answers with a
	// definite "connection unknown" refusal before it closes with tcprocks.ErrPeerLost.
	// Default 1 min.
	RefusalGrace time.Duration
}

// WithDefaults returns p with every zero field replaced by its default.
func (p Policy) WithDefaults() Policy {
	if p.HeartbeatInterval <= 0 {
		p.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if p.MissedHeartbeats <= 0 {
		p.MissedHeartbeats = DefaultMissedHeartbeats
	}
	if p.ReconnectTimeout == 0 {
		p.ReconnectTimeout = DefaultReconnectTimeout
	}
	if p.BackoffInitial <= 0 {
		p.BackoffInitial = DefaultBackoffInitial
	}
	if p.BackoffMax <= 0 {
		p.BackoffMax = DefaultBackoffMax
	}
	if p.RefusalGrace <= 0 {
		p.RefusalGrace = DefaultRefusalGrace
	}
	return p
}

// Backoff returns the pause before reconnection attempt number attempt (1 = the attempt after
// the first failure) when the rock has been suspended for elapsed. Within the first
// DefaultFastRetryPeriod the pause is at most FastRetryMax.
func (p Policy) Backoff(attempt int, elapsed time.Duration) time.Duration {
	p = p.WithDefaults()
	d := p.BackoffInitial
	for i := 1; i < attempt && d < p.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, p.BackoffMax)
	if elapsed < DefaultFastRetryPeriod {
		d = min(d, FastRetryMax)
	}
	return d
}

// Kind says what happened to a rock.
type Kind uint8

// The kinds of events, in the order they can occur for one suspension:
// Suspended, then Reconnecting (once per attempt), then Resumed, Closed or TimedOut.
const (
	// Suspended: the data connection failed; reads and writes block. Event.Cause says why.
	Suspended Kind = iota + 1
	// Reconnecting: an attempt to reach the peer starts. Event.Attempt and Event.Target are set.
	Reconnecting
	// Resumed: the rock is connected again. Event.Local/Remote are the new addresses,
	// Event.Downtime the time suspended, Event.Replayed the bytes sent again.
	Resumed
	// Closed: the rock has closed. Event.Cause is nil after a graceful close.
	Closed
	// TimedOut: the reconnect timeout expired; a Closed event follows.
	TimedOut
	// PeerMoved (package udpnotify, sending side): the peer's UDP address changed and the new
	// one passed path validation. Event.From is the old address (nil for the peer's first
	// validated address), Event.To the new one.
	PeerMoved
	// LocalAddressChanged (package udpnotify): this machine's usable addresses changed (seen by
	// netlink). Event.From is an address that disappeared (nil if none), Event.To one that
	// appeared (nil if none), both with the session's UDP port.
	LocalAddressChanged
	// PathValidated (package udpnotify, receiving side): the peer proved a UDP path to this side
	// and sends to it from now on. Event.From is the previous such address (nil the first
	// time), Event.To the new one, as the peer sees it (a NAT's public address, say).
	PathValidated
)

// String returns the kind's name in lower case ("suspended", ...).
func (k Kind) String() string {
	switch k {
	case Suspended:
		return "suspended"
	case Reconnecting:
		return "reconnecting"
	case Resumed:
		return "resumed"
	case Closed:
		return "closed"
	case TimedOut:
		return "timed out"
	case PeerMoved:
		return "peer moved"
	case LocalAddressChanged:
		return "local address changed"
	case PathValidated:
		return "path validated"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Event is one thing that happened to a rock. Which fields are set depends on Kind.
type Event struct {
	Kind Kind
	// Time is when it happened.
	Time time.Time
	// ID is the rock's connection ID.
	ID [16]byte
	// Cause: why the rock suspended (Suspended) or closed (Closed, TimedOut); nil for a graceful
	// close.
	Cause error
	// Attempt counts reconnection attempts within one suspension, from 1 (Reconnecting).
	Attempt int
	// Target is the address being tried (Reconnecting).
	Target string
	// Local and Remote are the data connection's addresses after a resumption (Resumed).
	Local, Remote net.Addr
	// Downtime is how long the rock was suspended (Resumed, TimedOut).
	Downtime time.Duration
	// Replayed is the number of bytes this side sent again after resuming (Resumed).
	Replayed int64
	// From and To are the old and new UDP addresses of a path change (PeerMoved,
	// LocalAddressChanged, PathValidated); see each Kind for which side's they are.
	From, To net.Addr
}

// Handler receives a rock's events. Events of one rock reach a handler one at a time and in
// order, from a goroutine owned by the rock, never while the rock holds a lock: a handler may
// call any method of the rock. A slow handler delays only later events for itself.
type Handler interface {
	HandleEvent(Event)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(Event)

// HandleEvent calls f(e).
func (f HandlerFunc) HandleEvent(e Event) { f(e) }

// Query describes the peer a Locator is asked about.
type Query struct {
	// ID is the rock's connection ID.
	ID [16]byte
	// Dialed is the address the rock was first dialed with (as given to tcprocks.Dial).
	Dialed string
	// Last is the peer's last known address (the remote address of the last data connection).
	Last string
	// Name is the locator name the peer announced at init (tcprocks.Config.Name on its side),
	// or "" when it announced none.
	Name string
}

// Locator finds a peer that has moved. A suspended rock consults it when its last known
// address and the alternates it was given fail. The DNS locator (package locator) implements it.
type Locator interface {
	// Locate returns addresses ("host:port") at which the peer may now be reached, best first.
	// An empty result and a nil error mean "nothing known".
	Locate(ctx context.Context, q Query) ([]string, error)
}

// Role is the side of a rock: the one that dialed or the one that accepted.
type Role uint8

// Roles.
const (
	Client Role = 1
	Server Role = 2
)

// AuthInfo tells an Authenticator about the connection it authenticates.
type AuthInfo struct {
	Role Role
	// Resume is false at initialisation and true at every reconnection.
	Resume bool
	// ID is the rock's connection ID.
	ID [16]byte
	// Binding is a 32-byte value both ends of this one data connection share and nobody else
	// knows (derived from the rock's key and the connection's nonces): sign it to bind an
	// application-level authentication to the rock.
	Binding []byte
}

// Authenticator is an application-level authentication (paper section 6) run on the data
// connection before any application byte, at initialisation and again at every reconnection,
// on both ends. It may read and write conn; it must leave no unread bytes of its own behind.
// An error closes that data connection: at initialisation Dial fails (or the server drops the
// connection); at a reconnection that attempt fails and the rock keeps trying.
type Authenticator interface {
	Authenticate(ctx context.Context, conn net.Conn, info AuthInfo) error
}

// AuthenticatorFunc adapts a function to Authenticator.
type AuthenticatorFunc func(ctx context.Context, conn net.Conn, info AuthInfo) error

// Authenticate calls f.
func (f AuthenticatorFunc) Authenticate(ctx context.Context, conn net.Conn, info AuthInfo) error {
	return f(ctx, conn, info)
}
