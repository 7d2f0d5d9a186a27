// Package testport hands tests loopback ports for programs that must be told a port
// before they start (named, udptunnel, the CLI's --metrics).
//
// A port the kernel gave out for ":0" and then released is a poor choice: it comes from
// the ephemeral range, where any outgoing connection of a test running in parallel may
// take it before the program binds it. Free draws from below that range instead, checks
// that both TCP and UDP can bind it on 127.0.0.1, and never gives the same port twice in
// one process.
package testport

import (
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
)

// The ports Free draws from: below Linux's default ephemeral range (32768–60999) and
// above the ranges well-known services use.
const (
	lo = 20000
	hi = 32000
)

var (
	mu   sync.Mutex
	next int
)

// Free returns a port of 127.0.0.1 that was free for both TCP and UDP a moment ago and
// that no earlier call in this process returned.
func Free(tb testing.TB) int {
	tb.Helper()
	mu.Lock()
	defer mu.Unlock()
	if next == 0 {
		// Test binaries of different packages run at once: start each at its own place.
		next = lo + (os.Getpid()*389)%(hi-lo)
	}
	for range hi - lo {
		port := next
		next++
		if next >= hi {
			next = lo
		}
		if bindable(port) {
			return port
		}
	}
	tb.Fatalf("testport: no port in [%d, %d) is free for both TCP and UDP on 127.0.0.1", lo, hi)
	return 0
}

// Addr returns "127.0.0.1:port" for a port from Free.
func Addr(tb testing.TB) string {
	tb.Helper()
	return fmt.Sprintf("127.0.0.1:%d", Free(tb))
}

func bindable(port int) bool {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	pc.Close()
	return true
}
