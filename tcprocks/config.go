package tcprocks

import (
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/control"
)

// Defaults of Config fields.
const (
	DefaultResumeTimeout        = 10 * time.Second
	DefaultMaxRocks             = 65536
	DefaultProbeCacheTTL        = 10 * time.Minute
	DefaultMaxSuspended         = 4096
	DefaultMaxInFlightMemory    = 1 << 30
	DefaultMaxPendingHandshakes = 256
	DefaultHandshakeTimeout     = 10 * time.Second
	DefaultMaxResumeRate        = 10
)

// Config configures rocks on both sides. A nil or zero Config works; every field states its
// default. Config is never modified; defaults are filled into a copy.
type Config struct {
	// Policy: heartbeats, reconnect timeout and backoff (zero fields: callbacks' defaults).
	// A live rock's policy can be changed with Conn.SetPolicy.
	Policy callbacks.Policy
	// Handler receives every rock's events (one ordered queue per rock); nil = none. More
	// handlers can be added to a live rock with Conn.Subscribe.
	Handler callbacks.Handler
	// Locator (dialing side) is consulted when the last known address and the alternates fail;
	// nil = none.
	Locator callbacks.Locator
	// Authenticator runs on both ends at initialisation and at every reconnection; nil = none.
	Authenticator callbacks.Authenticator
	// Alternates (dialing side) are further addresses ("host:port") at which the peer may be
	// reached after a failure, tried after its last known address. Default none; see also
	// Conn.SetAlternates.
	Alternates []string
	// RequireEnhanced (dialing side) makes Dial fail with ErrNotEnhanced against a server that
	// does not speak rocks/1, instead of returning a plain-TCP Conn. On a listener it closes
	// ordinary TCP clients instead of returning them from Accept (a listener with a PSK
	// always does). Default false.
	RequireEnhanced bool
	// PSK is an optional pre-shared key mixed into the key schedule: both ends must have the
	// same one, which stops a man in the middle at initialisation. Both ends confirm it at
	// initialisation: a peer with another key, or without one when this side has one (and
	// the reverse), fails init with ErrPSKMismatch on both ends and never gets a rock. A
	// listener with a PSK also refuses ordinary TCP clients (see RequireEnhanced). Default
	// none.
	PSK []byte
	// Name is this end's locator name (a DNS name, at most MaxNameLen bytes, see
	// locator), announced to the peer at initialisation: the peer's Conn.PeerName, and the
	// callbacks.Query.Name its Locator is asked about. Default "" (none).
	Name string

	// InFlightLimit is the most bytes that can be in flight between the two applications, which
	// is also the in-flight buffer's size. Default 0: this side's kernel send-buffer maximum +
	// the peer's receive-buffer maximum + slack (see limits.go). Raise it when a TCP-terminating
	// proxy sits on the path: its socket buffers hold bytes too.
	InFlightLimit int
	// ResumeTimeout bounds one reconnection attempt (connect, EDP handshake, authentication).
	// Default 10 s.
	ResumeTimeout time.Duration
	// MaxRocks (listener) bounds the rocks one listener keeps at once; beyond it new rocks
	// are refused (Dial fails with ErrLimit). Default 65536.
	MaxRocks int

	// Limits against abuse (listener). Reaching one refuses new work — Dial fails with an
	// error matching ErrLimit that names the limit, or a resume attempt is refused and
	// retried later — and never disturbs established rocks.

	// MaxSuspended is the most suspended rocks a listener keeps (each waits for its client,
	// holding its unacknowledged bytes, up to the reconnect timeout); at the limit new rocks
	// are refused until one resumes or closes. Default 4096.
	MaxSuspended int
	// MaxInFlightMemory is the most bytes the in-flight buffers of a listener's rocks may
	// hold together before new rocks are refused. Rocks already established keep writing
	// within their own in-flight limits, so the total can exceed it by what they hold.
	// Default 1 GiB.
	MaxInFlightMemory int64
	// MaxPendingHandshakes is the most handshakes a listener finishes at once: connections
	// past the EDP negotiation whose client has not yet proven itself (PSK confirmation,
	// resume proof, Authenticator); beyond it new INIT and RESUME requests are refused as
	// busy. (The EDP negotiation itself is bounded by EDP.MaxPending and
	// EDP.ClassifyTimeout.) Default 256.
	MaxPendingHandshakes int
	// HandshakeTimeout (listener) bounds a pending handshake: the wait for the client's
	// proof (CONFIRM or PROOF), and then the Authenticator. Default 10 s.
	HandshakeTimeout time.Duration
	// MaxResumeRate (listener) is the most resume attempts per second for one connection
	// ID (burst: as many); beyond it attempts are refused as busy, and the client retries
	// with its backoff. Default 10.
	MaxResumeRate int
	// IgnoreNetworkChanges turns off the reaction to local network changes. By default rocks
	// follow the machine's interfaces with one netlink monitor per process (package
	// internal/netmon), started with the first rock and stopped when the last has finished:
	// a rock whose data connection's local address disappears suspends at once (cause
	// ErrAddressRemoved), and when an address, a link or a default route appears every
	// suspended dialing rock retries at once with its backoff reset. Default false.
	IgnoreNetworkChanges bool

	// EDP is the base enhancement-detection configuration (timeouts, Logger, Announcement on a
	// listener); its Enhancements, Cache and (dialing side) Announcement are set by tcprocks.
	// nil = edp's defaults.
	EDP *edp.Config
	// ProbeCache (dialing side) remembers EDP probe results; nil = one cache shared by the
	// process (TTL 10 min).
	ProbeCache *edp.Cache
	// NetDialer (dialing side) makes the TCP connections; nil = a zero net.Dialer.
	NetDialer *net.Dialer
	// ControlClient (dialing side) dials control channels; nil = one client shared by the
	// process, created on first use and never closed. Close a client of your own only after
	// its rocks have finished (Conn.Close and the Closed event): closing it earlier takes the
	// control channels of rocks still closing, which then suspend and finish by reconnecting.
	ControlClient *control.Client
	// ControlConn (listener) is the UDP socket for the control server; nil = a new one on the
	// TCP listener's IP address and port number.
	ControlConn net.PacketConn
	// ControlFallbackAfter (dialing side) is how long a control channel's QUIC handshake may
	// take before the rock opens its control channel over a second TCP connection instead
	// (for networks that drop UDP). Every reconnection tries QUIC first again. Default 1 s.
	ControlFallbackAfter time.Duration
	// Logger receives debug and warning messages; nil = silent.
	Logger *slog.Logger
}

func (cfg *Config) withDefaults() *Config {
	c := &Config{}
	if cfg != nil {
		*c = *cfg
	}
	c.Policy = c.Policy.WithDefaults()
	c.Alternates = append([]string(nil), c.Alternates...)
	if c.ResumeTimeout <= 0 {
		c.ResumeTimeout = DefaultResumeTimeout
	}
	if c.MaxRocks <= 0 {
		c.MaxRocks = DefaultMaxRocks
	}
	if c.ControlFallbackAfter <= 0 {
		c.ControlFallbackAfter = DefaultControlFallbackAfter
	}
	if c.MaxSuspended <= 0 {
		c.MaxSuspended = DefaultMaxSuspended
	}
	if c.MaxInFlightMemory <= 0 {
		c.MaxInFlightMemory = DefaultMaxInFlightMemory
	}
	if c.MaxPendingHandshakes <= 0 {
		c.MaxPendingHandshakes = DefaultMaxPendingHandshakes
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.MaxResumeRate <= 0 {
		c.MaxResumeRate = DefaultMaxResumeRate
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ProbeCache == nil {
		c.ProbeCache = sharedCache()
	}
	if c.NetDialer == nil {
		c.NetDialer = &net.Dialer{}
	}
	return c
}

// edpConfig returns a copy of the base EDP configuration offering enh.
func (c *Config) edpConfig(enh edp.Enhancement) *edp.Config {
	e := &edp.Config{}
	if c.EDP != nil {
		*e = *c.EDP
	}
	e.Enhancements = []edp.Enhancement{enh}
	if e.Logger == nil {
		e.Logger = c.Logger
	}
	return e
}

var (
	sharedCache         = sync.OnceValue(func() *edp.Cache { return edp.NewCache(DefaultProbeCacheTTL) })
	sharedControlClient = sync.OnceValues(func() (*control.Client, error) { return control.NewClient(nil) })
)

func (c *Config) controlClient() (*control.Client, error) {
	if c.ControlClient != nil {
		return c.ControlClient, nil
	}
	return sharedControlClient()
}

// Kernel buffer limits.
//
// A byte the application wrote into TCP but the peer's rock has not yet read sits in this
// side's send buffer (unsent or unacknowledged: the retransmission queue) or in the peer's
// receive buffer (in order or out of order). Linux autotuning grows both up to
// net.ipv4.tcp_wmem[2] and tcp_rmem[2] (an explicit SO_SNDBUF/SO_RCVBUF, which rocks never set,
// would be bounded by net.core.{w,r}mem_max instead). Both limits count kernel memory (payload
// plus sk_buff overhead), so the payload they hold is smaller; but the kernel admits one
// segment beyond the limit before it stops, so we add a slack of limitSlack bytes (a few
// 64 KiB loopback segments). C = local send max + peer receive max + slack bounds the bytes in
// flight, and every byte before (written into TCP − C) has provably been consumed by the peer.
const (
	limitSlack        = 1 << 20
	fallbackSendLimit = 4 << 20
	fallbackRecvLimit = 6 << 20
)

// localLimits returns this host's buffer maxima (read once per process).
var localLimits = sync.OnceValue(func() limits {
	return limits{
		Recv: sysctlMax("/proc/sys/net/ipv4/tcp_rmem", "/proc/sys/net/core/rmem_max", fallbackRecvLimit),
		Send: sysctlMax("/proc/sys/net/ipv4/tcp_wmem", "/proc/sys/net/core/wmem_max", fallbackSendLimit),
	}
})

// sysctlMax returns max(third field of tcpFile, 2 × coreFile), or fallback if neither can be
// read.
func sysctlMax(tcpFile, coreFile string, fallback uint32) uint32 {
	var best uint64
	if b, err := os.ReadFile(tcpFile); err == nil {
		if f := strings.Fields(string(b)); len(f) == 3 {
			if v, err := strconv.ParseUint(f[2], 10, 32); err == nil {
				best = v
			}
		}
	}
	if b, err := os.ReadFile(coreFile); err == nil {
		if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 31); err == nil {
			best = max(best, 2*v) // the kernel doubles a set SO_SNDBUF/SO_RCVBUF
		}
	}
	if best == 0 || best > 1<<31 {
		return fallback
	}
	return uint32(best)
}

// inFlightLimit returns C for bytes sent from a side with limits local to a peer with
// limits peer.
func (c *Config) inFlightLimit(local, peer limits) uint64 {
	if c.InFlightLimit > 0 {
		return uint64(c.InFlightLimit)
	}
	return uint64(local.Send) + uint64(peer.Recv) + limitSlack
}
