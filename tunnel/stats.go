package tunnel

import (
	"fmt"
	"sync/atomic"
)

// DropReason says why a datagram was dropped.
type DropReason int

// Drop reasons. Each is counted in Stats.Drops under its String name.
const (
	// DropQueueFull: the send queue was at its byte bound (Config.MaxQueue)
	// and nothing in it was old enough to expire; the new datagram is dropped.
	DropQueueFull DropReason = iota
	// DropTooOld: the datagram waited longer than this side's Config.MaxAge
	// before it could be written to the rock.
	DropTooOld
	// DropStale: the datagram reached this side later than the sender's
	// max-age allows (it was delayed inside the rock), see docs/protocol.md.
	DropStale
	// DropTooBig: the datagram is larger than the other side can send on
	// (Hello.MaxDatagram), or larger than this side's read buffer.
	DropTooBig
	// DropFlowLimit: a new flow would exceed Config.MaxFlows (on either side).
	DropFlowLimit
	// DropUnknownFlow: a Data frame for a flow that is closed (an idle flow
	// closed by one side while the other was still sending).
	DropUnknownFlow
	// DropSendError: sending the datagram to its UDP destination failed
	// (e.g. EMSGSIZE, no route, a full socket buffer).
	DropSendError
	numDropReasons
)

var dropNames = [numDropReasons]string{
	DropQueueFull:   "queue-full",
	DropTooOld:      "too-old",
	DropStale:       "stale",
	DropTooBig:      "too-big",
	DropFlowLimit:   "flow-limit",
	DropUnknownFlow: "unknown-flow",
	DropSendError:   "send-error",
}

// String returns the reason's metric label, e.g. "too-old".
func (r DropReason) String() string {
	if r >= 0 && r < numDropReasons {
		return dropNames[r]
	}
	return fmt.Sprintf("DropReason(%d)", int(r))
}

// DropReasons lists every DropReason, in order, for exporting counters.
func DropReasons() []DropReason {
	rs := make([]DropReason, numDropReasons)
	for i := range rs {
		rs[i] = DropReason(i)
	}
	return rs
}

// Stats is a snapshot of a tunnel end's counters. Counters only grow;
// Flows and QueuedBytes are current values. "In" is UDP into the tunnel
// (read from local UDP sockets), "Out" is out of the tunnel (sent on them).
type Stats struct {
	DatagramsIn  uint64 // datagrams read from UDP, including those dropped later
	BytesIn      uint64 // their payload bytes
	DatagramsOut uint64 // datagrams sent on UDP
	BytesOut     uint64 // their payload bytes

	Flows       int    // flows open now
	FlowsOpened uint64 // flows opened so far
	FlowsClosed uint64 // flows closed so far (idle, limit or by the peer)

	QueuedBytes int    // bytes waiting for the rock (frames queued and being written)
	RockWrites  uint64 // Write calls on the rock (one per batch of frames)
	RockBytes   uint64 // bytes written to the rock

	// Drops counts dropped datagrams, indexed by DropReason.
	Drops [numDropReasons]uint64
	// DroppedBytes counts the payload bytes of dropped datagrams, by reason.
	DroppedBytes [numDropReasons]uint64
}

// Dropped returns the number of datagrams dropped for any reason.
func (s Stats) Dropped() uint64 {
	var n uint64
	for _, d := range s.Drops {
		n += d
	}
	return n
}

// counters are the atomically updated parts of Stats.
type counters struct {
	datagramsIn, bytesIn   atomic.Uint64
	datagramsOut, bytesOut atomic.Uint64
	flowsOpened            atomic.Uint64
	flowsClosed            atomic.Uint64
	rockWrites, rockBytes  atomic.Uint64
	drops, droppedBytes    [numDropReasons]atomic.Uint64
}

func (c *counters) drop(r DropReason, n int) {
	c.drops[r].Add(1)
	c.droppedBytes[r].Add(uint64(n))
}

func (c *counters) snapshot() Stats {
	s := Stats{
		DatagramsIn:  c.datagramsIn.Load(),
		BytesIn:      c.bytesIn.Load(),
		DatagramsOut: c.datagramsOut.Load(),
		BytesOut:     c.bytesOut.Load(),
		FlowsOpened:  c.flowsOpened.Load(),
		FlowsClosed:  c.flowsClosed.Load(),
		RockWrites:   c.rockWrites.Load(),
		RockBytes:    c.rockBytes.Load(),
	}
	for i := range s.Drops {
		s.Drops[i] = c.drops[i].Load()
		s.DroppedBytes[i] = c.droppedBytes[i].Load()
	}
	return s
}
