//go:build !linux

package relay

import "syscall"

// spliceSupported says whether pump.splice can move bytes in the kernel.
const spliceSupported = false

type pipe struct{}

func (p *pipe) close() {}

func (m *pump) splice(state) error {
	m.noSplice = true
	return nil
}

func rawConn(c interface {
	SyscallConn() (syscall.RawConn, error)
}) syscall.RawConn {
	return nil
}
