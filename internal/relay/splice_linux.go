package relay

import (
	"errors"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// spliceSupported says whether pump.splice can move bytes in the kernel.
const spliceSupported = true

// spliceMax is the most one splice(2) call moves, and the pipe size asked for.
const spliceMax = 1 << 20

const spliceFlags = unix.SPLICE_F_NONBLOCK | unix.SPLICE_F_MOVE

// pipe is the kernel buffer splice(2) moves bytes through.
type pipe struct{ r, w int }

func newPipe() (*pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, spliceMax) // best effort
	return &pipe{r: fds[0], w: fds[1]}, nil
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// splice moves bytes from src to dst in the kernel, batch by batch (up to
// spliceMax each), until st goes stale, a read deadline (an interrupt)
// expires, src reaches EOF or an error.
//
// We do not use (*net.TCPConn).ReadFrom, which splices too: after an
// interrupt, a read that races with arriving data may still succeed there,
// so a byte sent after Blackhole returned could slip through. Here the
// staleness check and the read happen together under m.gate, which
// Relay.update passes through before it returns.
func (m *pump) splice(st state) error {
	if m.pipe == nil {
		p, err := newPipe()
		if err != nil {
			m.noSplice = true // copy through userspace instead
			return nil
		}
		m.pipe = p
	}
	m.src.SetReadDeadline(noDeadline)
	if m.stale(st) {
		return nil
	}

	for {
		moved, err := m.spliceOnce(st)
		if err != nil || !moved {
			return err
		}
	}
}

// spliceOnce moves one batch; moved is false when it stopped for a reason
// the caller must look at (staleness, an interrupt, EOF, a fallback).
func (m *pump) spliceOnce(st state) (moved bool, _ error) {
	var n int
	var serr error
	stale := false
	err := m.srcRaw.Read(func(fd uintptr) bool {
		m.gate.Lock()
		defer m.gate.Unlock()
		if m.stale(st) {
			stale = true
			return true
		}
		for {
			k, err := unix.Splice(int(fd), nil, m.pipe.w, nil, spliceMax, spliceFlags)
			if err == unix.EINTR {
				continue
			}
			n, serr = int(k), err
			return err != unix.EAGAIN
		}
	})
	switch {
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded):
		return false, nil // interrupted: look at the state again
	case err != nil:
		return false, err
	case stale:
		return false, nil
	case serr == unix.EINVAL:
		m.noSplice = true // nothing was moved; copy through userspace
		return false, nil
	case serr != nil:
		return false, os.NewSyscallError("splice", serr)
	case n == 0:
		m.eof = true
		return false, nil
	}

	for n > 0 {
		var k int
		var werr error
		err := m.dstRaw.Write(func(fd uintptr) bool {
			for {
				w, err := unix.Splice(m.pipe.r, nil, int(fd), nil, n, spliceFlags)
				if err == unix.EINTR {
					continue
				}
				k, werr = int(w), err
				return err != unix.EAGAIN
			}
		})
		if k > 0 {
			n -= k
			m.bytes.Add(uint64(k))
		}
		if err == nil && werr != nil {
			err = os.NewSyscallError("splice", werr)
		}
		if err == nil && k == 0 {
			err = io.ErrNoProgress
		}
		if err != nil {
			return false, err
		}
	}
	return true, nil
}

// rawConn returns c's syscall.RawConn.
func rawConn(c interface {
	SyscallConn() (syscall.RawConn, error)
}) syscall.RawConn {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}
