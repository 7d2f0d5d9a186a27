//go:build !linux

package tcprocks

import (
	"net"
	"time"
)

// connBroken is not implemented here: failures are seen by reads, writes and heartbeats.
func connBroken(net.Conn) bool { return false }

// dataStall is not implemented here: a stalled data path is seen by missed heartbeats.
func dataStall(net.Conn) time.Duration { return 0 }
