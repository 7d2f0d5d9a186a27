package edp

import (
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// wireCounts is what the kernel counted on one end of a TCP connection: payload
// bytes received and data segments sent (TCP_INFO tcpi_bytes_received and
// tcpi_data_segs_out). Tests count bytes and segments, never wall time, to show
// how many round trips a classification cost.
type wireCounts struct {
	BytesReceived uint64
	DataSegsOut   uint32
}

// tcpCounts reads them (ok is false where TCP_INFO is not available).
func tcpCounts(t testing.TB, c net.Conn) (w wireCounts, ok bool) {
	t.Helper()
	if ec, ok := c.(*Conn); ok {
		c = ec.NetConn()
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			gerr = err
			return
		}
		w = wireCounts{BytesReceived: ti.Bytes_received, DataSegsOut: ti.Data_segs_out}
	}); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatalf("TCP_INFO: %v", gerr)
	}
	return w, true
}
