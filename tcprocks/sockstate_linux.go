package tcprocks

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcpInfo reads TCP_INFO of the socket under c. ok is false if c has no socket.
func tcpInfo(c net.Conn) (ti *unix.TCPInfo, ok bool, err error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, false, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, true, err
	}
	cerr := rc.Control(func(fd uintptr) {
		ti, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if cerr != nil {
		return nil, true, cerr
	}
	return ti, true, err
}

// sockState reads TCP_INFO once. broken: the kernel says the TCP connection under c no
// longer carries data both ways (the peer sent FIN or RST, or it is closed), which lets an
// idle rock notice a failed data connection without a goroutine blocked in Read. stall: as
// dataStall.
func sockState(c net.Conn) (broken bool, stall time.Duration) {
	ti, ok, err := tcpInfo(c)
	switch {
	case !ok:
		return false, 0
	case err != nil:
		return true, 0
	}
	return ti.State != unix.BPF_TCP_ESTABLISHED, stallOf(ti)
}

// dataStall reports how long the TCP connection under c has held unacknowledged data without
// receiving any acknowledgement, once its retransmission timer has fired; zero if the
// connection is making progress (or its state cannot be read).
func dataStall(c net.Conn) time.Duration {
	ti, ok, err := tcpInfo(c)
	if !ok || err != nil {
		return 0
	}
	return stallOf(ti)
}

// stallOf is dataStall's rule on a TCP_INFO value: bytes are unacknowledged, the
// retransmission timer has fired at least once, and the time since the last ACK.
func stallOf(ti *unix.TCPInfo) time.Duration {
	if ti.Unacked == 0 || (ti.Retransmits == 0 && ti.Backoff == 0) {
		return 0
	}
	return time.Duration(ti.Last_ack_recv) * time.Millisecond
}
