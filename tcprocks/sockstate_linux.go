package tcprocks

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// connBroken reports whether the kernel says the TCP connection under c no longer carries
// data both ways (the peer sent FIN or RST, or the connection is closed). It lets an idle rock
// notice a failed data connection without a goroutine blocked in Read.
func connBroken(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	broken := false
	cerr := rc.Control(func(fd uintptr) {
		ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			broken = true
			return
		}
		broken = ti.State != unix.BPF_TCP_ESTABLISHED
	})
	return broken || cerr != nil
}
