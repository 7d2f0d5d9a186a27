//go:build !linux

package edp

import (
	"net"
	"testing"
)

type wireCounts struct {
	BytesReceived uint64
	DataSegsOut   uint32
}

// tcpCounts reports false where TCP_INFO is not read (only Linux is).
func tcpCounts(testing.TB, net.Conn) (wireCounts, bool) { return wireCounts{}, false }
