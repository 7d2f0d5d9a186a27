package edp

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Role says which end of the connection a hook runs on.
type Role uint8

// Roles.
const (
	RoleClient Role = 1
	RoleServer Role = 2
)

// String returns "client" or "server".
func (r Role) String() string {
	switch r {
	case RoleClient:
		return "client"
	case RoleServer:
		return "server"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Enhancement is one socket enhancement that edp can negotiate. Other packages define
// their own (rocks/1, compression, encryption) and list them in Config.Enhancements;
// edp only matches names and versions and runs the hooks.
type Enhancement struct {
	Name    string // 1..MaxNameLen bytes of [a-z0-9.-]
	Version uint8
	// Hello (optional) makes this side's parameters for the enhancement (at most
	// MaxParamsLen bytes). Client: called with peer == nil before the offer is sent; an
	// error fails the Dial. Server: called with the client's parameters; an error
	// declines the enhancement for this connection. state goes to Agreed.State.
	Hello func(role Role, peer []byte) (params []byte, state any, err error)
	// Init (optional) runs after negotiation, in agreed order, on both sides; it may
	// wrap the conn, and the conn it returns is passed to the next Init. An error fails
	// the enhanced handshake (client: cache entry invalidated, error returned; server:
	// connection closed). ctx carries the handshake deadline.
	Init func(ctx context.Context, conn net.Conn, a *Agreed) (net.Conn, error)
}

// ID returns the enhancement's name and version.
func (e *Enhancement) ID() ID { return ID{Name: e.Name, Version: e.Version} }

// Agreed is one negotiated enhancement of a connection.
type Agreed struct {
	ID
	Local []byte // this side's Hello params
	Peer  []byte // the other side's Hello params
	State any    // what this side's Hello returned as state
}

// Reason says why a connection is ordinary.
type Reason uint8

// Reasons. The client sees the first five from its probe; the server gives ReasonData
// or ReasonTimeout to ordinary connections it hands to the application.
const (
	ReasonNone      Reason = iota // enhanced
	ReasonClosed                  // the server closed the probe without sending a byte
	ReasonReset                   // the server reset the probe
	ReasonData                    // the peer sent bytes that are not an announcement
	ReasonTimeout                 // the peer stayed silent (probe timeout / FirstByteWait)
	ReasonTruncated               // an announcement began but was cut short (not cached)
)

// String returns "none", "closed", "reset", "data", "timeout" or "truncated".
func (r Reason) String() string {
	switch r {
	case ReasonNone:
		return "none"
	case ReasonClosed:
		return "closed"
	case ReasonReset:
		return "reset"
	case ReasonData:
		return "data"
	case ReasonTimeout:
		return "timeout"
	case ReasonTruncated:
		return "truncated"
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Result is the outcome of enhancement detection for one connection.
type Result struct {
	Enhanced bool
	Reason   Reason // why the connection is ordinary; zero when Enhanced
	// Offered is what the other end offers: client: the server's list from the probe
	// reply or the cache (nil if the server sent none); server: the client's offer.
	Offered []ID
	Agreed  []Agreed // negotiated, in order (may be empty even when Enhanced)
	Cached  bool     // client: probe skipped thanks to the cache or Config.Announcement
	// Announcement is, on the client of an enhanced connection, the server's
	// announcement; keep it (Config.Announcement) to reconnect without a probe.
	Announcement []byte
}

// Defaults of Config fields.
const (
	DefaultProbeTimeoutMultiple = 10
	DefaultProbeTimeoutMin      = 250 * time.Millisecond
	DefaultProbeTimeoutMax      = 5 * time.Second
	DefaultHandshakeTimeout     = 10 * time.Second
	DefaultFirstByteWaitMin     = 100 * time.Millisecond
	DefaultFirstByteWaitMax     = 500 * time.Millisecond
	DefaultClassifyTimeout      = 10 * time.Second
	DefaultMaxPending           = 1024
)

// Config configures both ends. A nil or zero Config works; fields that apply to one
// side only say so. Config is never modified; defaults are filled into a copy.
type Config struct {
	// Enhancements: client: offered in this order of preference; server: supported.
	// At most MaxOffers, names valid and distinct. Default none (the handshake then
	// only detects the other end).
	Enhancements []Enhancement
	// Announcement: server: the AnnouncementLen-byte announcement, which several
	// server processes may share (LoadAnnouncement); nil = a random one per listener.
	// Client: non-nil = skip the probe and use it (no re-probe if it is stale).
	Announcement []byte
	// Cache (client) remembers probe results per server address; nil = no cache,
	// probe on every Dial.
	Cache *Cache

	// ProbeTimeoutMultiple (client): the probe waits for the announcement this many
	// times the time the probe's connect took. Default 10.
	ProbeTimeoutMultiple int
	// ProbeTimeoutMin (client): floor of the probe timeout. Default 250ms.
	ProbeTimeoutMin time.Duration
	// ProbeTimeoutMax (client): ceiling of the probe timeout. Default 5s.
	ProbeTimeoutMax time.Duration
	// HandshakeTimeout (client): time allowed from the connect of the enhanced
	// connection to the end of the Init hooks. Default 10s.
	HandshakeTimeout time.Duration

	// FirstByteWait (server): how long an accepted connection that has sent nothing
	// is held before it is handed to the application as ordinary (server-speaks-first
	// protocols wait this long for their banner). Default: the kernel's smoothed RTT
	// of the connection (TCP_INFO), clamped to [100ms, 500ms].
	FirstByteWait time.Duration
	// ClassifyTimeout (server): time allowed for an enhanced handshake from accept to
	// the end of the Init hooks, and for answering a probe. Default 10s.
	ClassifyTimeout time.Duration
	// MaxPending (server): connections being classified or waiting for Accept at
	// once. At the limit the listener stops accepting until a slot frees, so new
	// connections wait in the kernel's listen backlog. Default 1024.
	MaxPending int

	// Logger receives debug and warning messages; nil = silent.
	Logger *slog.Logger
}

// withDefaults returns a copy of cfg (nil allowed) with defaults filled in.
func (cfg *Config) withDefaults() *Config {
	c := &Config{}
	if cfg != nil {
		*c = *cfg
	}
	if c.ProbeTimeoutMultiple <= 0 {
		c.ProbeTimeoutMultiple = DefaultProbeTimeoutMultiple
	}
	if c.ProbeTimeoutMin <= 0 {
		c.ProbeTimeoutMin = DefaultProbeTimeoutMin
	}
	if c.ProbeTimeoutMax <= 0 {
		c.ProbeTimeoutMax = DefaultProbeTimeoutMax
	}
	if c.ProbeTimeoutMax < c.ProbeTimeoutMin {
		c.ProbeTimeoutMax = c.ProbeTimeoutMin
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.ClassifyTimeout <= 0 {
		c.ClassifyTimeout = DefaultClassifyTimeout
	}
	if c.MaxPending <= 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// validate checks the enhancements and the announcement.
func (cfg *Config) validate() error {
	if len(cfg.Enhancements) > MaxOffers {
		return fmt.Errorf("edp: config: %d enhancements, limit %d", len(cfg.Enhancements), MaxOffers)
	}
	for i := range cfg.Enhancements {
		id := cfg.Enhancements[i].ID()
		if err := id.validate(); err != nil {
			return fmt.Errorf("edp: config: %w", err)
		}
		for j := range i {
			if cfg.Enhancements[j].ID() == id {
				return fmt.Errorf("edp: config: enhancement %s listed twice", id)
			}
		}
	}
	if cfg.Announcement != nil {
		if err := checkAnnouncement(cfg.Announcement); err != nil {
			return fmt.Errorf("edp: config: %w", err)
		}
	}
	return nil
}

// probeTimeout returns the probe's read timeout for a connect that took d.
func (cfg *Config) probeTimeout(d time.Duration) time.Duration {
	return min(max(d*time.Duration(cfg.ProbeTimeoutMultiple), cfg.ProbeTimeoutMin), cfg.ProbeTimeoutMax)
}
