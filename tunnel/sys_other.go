//go:build !linux

package tunnel

import "syscall"

// msgTrunc: other systems do not report truncation through ReadBatch's
// single-message fallback; read buffers are large enough anyway.
const msgTrunc = 0

// waitReadable returns at once: the reader then blocks in ReadBatch,
// holding its buffers.
func waitReadable(syscall.RawConn) error { return nil }
