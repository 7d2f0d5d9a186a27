package testport

import (
	"net"
	"strconv"
	"testing"
)

func TestFreeIsUniqueAndBindable(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		p := Free(t)
		if p < lo || p >= hi {
			t.Fatalf("port %d outside [%d, %d)", p, lo, hi)
		}
		if seen[p] {
			t.Fatalf("port %d given twice", p)
		}
		seen[p] = true
	}
	a := Addr(t)
	ln, err := net.Listen("tcp", a)
	if err != nil {
		t.Fatalf("Addr %s not bindable: %v", a, err)
	}
	ln.Close()
}

func TestFreeSkipsBusyPorts(t *testing.T) {
	// Occupy the UDP side of the port Free would hand out next.
	for {
		p := Free(t)
		pc, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(p+1))
		if err != nil {
			continue // someone else has it: try the next pair
		}
		defer pc.Close()
		mu.Lock()
		next = p + 1
		mu.Unlock()
		if q := Free(t); q == p+1 {
			t.Fatalf("Free returned port %d, whose UDP side is in use", q)
		}
		return
	}
}
