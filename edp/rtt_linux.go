package edp

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// kernelRTT returns the kernel's smoothed RTT of a TCP connection (TCP_INFO
// tcpi_rtt), or 0 if it is not available.
func kernelRTT(c net.Conn) time.Duration {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	var rtt time.Duration
	rc.Control(func(fd uintptr) {
		if ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			rtt = time.Duration(ti.Rtt) * time.Microsecond
		}
	})
	return rtt
}
