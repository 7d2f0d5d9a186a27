//go:build !linux

package tcprocks

import "net"

// connBroken is not implemented here: failures are seen by reads, writes and heartbeats.
func connBroken(net.Conn) bool { return false }
