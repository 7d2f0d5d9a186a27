//go:build !linux

package tcprocks

import (
	"net"
	"time"
)

// sockState is not implemented here: failures are seen by reads, writes and heartbeats.
func sockState(net.Conn) (broken bool, stall time.Duration) { return false, 0 }
