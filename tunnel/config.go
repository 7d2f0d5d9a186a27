package tunnel

import (
	"log/slog"
	"time"
)

// Defaults of Config fields.
const (
	DefaultMaxQueue     = 4 << 20
	DefaultMaxFlows     = 4096
	DefaultIdleTimeout  = 2 * time.Minute
	DefaultBatchSize    = 32
	DefaultSocketBuffer = 4 << 20
)

// Config tunes one end of a tunnel. A nil *Config and the zero value of
// every field are valid; NewClient and NewServer fill defaults into a copy
// and never modify the caller's struct.
type Config struct {
	// MaxAge is this end's policy for the datagrams it sends: a datagram that
	// would reach the far end's UDP socket more than MaxAge after this end
	// read it is dropped instead (counted as DropTooOld here when it has not
	// been written to the rock yet, as DropStale at the far end when it was
	// delayed inside the rock). Millisecond resolution. Default 0: no
	// datagram is ever dropped for its age (reliable streams such as logs).
	MaxAge time.Duration

	// MaxQueue bounds, in bytes of frames (11-byte header + payload), what
	// waits in user space for the rock: the queue and the batch being
	// written. While the rock is suspended its Write blocks and the queue
	// fills; at the bound, expired datagrams are dropped from the head and,
	// if that is not enough, the new datagram is dropped (DropQueueFull).
	// Default 4 MiB.
	MaxQueue int

	// MaxFlows bounds the flows open at once: on a client, datagrams from
	// further source addresses are dropped (DropFlowLimit); on a server,
	// further flows are refused. Default 4096.
	MaxFlows int

	// IdleTimeout ends a flow when no datagram has passed in either
	// direction for this long; both ends apply it. Default 2 min.
	IdleTimeout time.Duration

	// BatchSize is the most datagrams read or sent per recvmmsg/sendmmsg
	// call. Every read slot is 64 KiB, so a reader holds BatchSize×64 KiB.
	// Default 32.
	BatchSize int

	// SocketBuffer is the SO_RCVBUF and SO_SNDBUF requested for the UDP
	// sockets the tunnel uses (the kernel caps it at net.core.rmem_max and
	// wmem_max). Default 4 MiB; negative leaves the system default.
	SocketBuffer int

	// Logger receives a warning when a tunnel ends with an error (malformed
	// frame, rock failure) and debug records about flows. Default nil: silent.
	Logger *slog.Logger
}

func (c *Config) withDefaults() Config {
	var d Config
	if c != nil {
		d = *c
	}
	if d.MaxAge < 0 {
		d.MaxAge = 0
	}
	if d.MaxQueue <= 0 {
		d.MaxQueue = DefaultMaxQueue
	}
	// The bound must let the largest frame (and its flow's Open) through.
	d.MaxQueue = max(d.MaxQueue, MaxFrameLen+HeaderLen)
	if d.MaxFlows <= 0 {
		d.MaxFlows = DefaultMaxFlows
	}
	if d.IdleTimeout <= 0 {
		d.IdleTimeout = DefaultIdleTimeout
	}
	if d.BatchSize <= 0 {
		d.BatchSize = DefaultBatchSize
	}
	if d.SocketBuffer == 0 {
		d.SocketBuffer = DefaultSocketBuffer
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	return d
}
