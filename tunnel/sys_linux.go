package tunnel

import (
	"syscall"
)

// msgTrunc is the recvmmsg flag of a datagram longer than its buffer.
const msgTrunc = syscall.MSG_TRUNC

// waitReadable blocks until a datagram is waiting on rc's socket (or the
// socket is closed), without holding a read buffer: it peeks with a
// zero-length, non-blocking recvfrom.
func waitReadable(rc syscall.RawConn) error {
	return rc.Read(func(fd uintptr) bool {
		_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, 0, 0,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		return errno != syscall.EAGAIN && errno != syscall.EINTR
	})
}
