//go:build !linux

package edp

import (
	"net"
	"time"
)

// kernelRTT is not available on this platform: FirstByteWait uses its floor.
func kernelRTT(net.Conn) time.Duration { return 0 }
