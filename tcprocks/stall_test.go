//go:build linux

package tcprocks

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"golang.org/x/sys/unix"
)

func TestStallOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		ti   unix.TCPInfo
		want time.Duration
	}{
		{"idle", unix.TCPInfo{Last_ack_recv: 9000}, 0},
		{"in flight, no timeout yet", unix.TCPInfo{Unacked: 3, Last_ack_recv: 9000}, 0},
		{"retransmitting", unix.TCPInfo{Unacked: 3, Retransmits: 2, Backoff: 2, Last_ack_recv: 4200}, 4200 * time.Millisecond},
		{"backed off", unix.TCPInfo{Unacked: 1, Backoff: 1, Last_ack_recv: 700}, 700 * time.Millisecond},
		{"acked", unix.TCPInfo{Retransmits: 2, Backoff: 2, Last_ack_recv: 4200}, 0},
	} {
		if got := stallOf(&tc.ti); got != tc.want {
			t.Errorf("%s: stallOf = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// causeLog records the causes of Suspended events.
type causeLog struct {
	mu     sync.Mutex
	causes []error
}

func (l *causeLog) HandleEvent(e callbacks.Event) {
	if e.Kind == callbacks.Suspended {
		l.mu.Lock()
		l.causes = append(l.causes, e.Cause)
		l.mu.Unlock()
	}
}

func (l *causeLog) first() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.causes) == 0 {
		return nil
	}
	return l.causes[0]
}

// dropIncoming makes the kernel drop every packet that arrives for conn's socket (a socket
// filter that accepts nothing), as if the network path had died: no ACK reaches it any more.
func dropIncoming(t testing.TB, conn net.Conn) {
	t.Helper()
	rc, err := conn.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: 1, Filter: &drop[0]})
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
}

// TestDataStallOnRealSocket: a TCP connection whose incoming packets are dropped, with bytes
// in flight, shows a growing stall; before that, none.
func TestDataStallOnRealSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	defer s.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	if d := dataStall(c); d != 0 {
		t.Fatalf("stall %v on a working connection", d)
	}
	dropIncoming(t, c)
	if _, err := c.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a stall of 500ms", func() bool { return dataStall(c) > 500*time.Millisecond })
}

// TestStalledDataPathSuspends: the client's data connection stops receiving (its address
// vanished, say) while it has bytes in flight. With the control channel up and heartbeats
// flowing, and with no control channel at all (as after a resumption, before it is re-dialed),
// the rock suspends with cause "data path stalled", then resumes on a new connection.
func TestStalledDataPathSuspends(t *testing.T) {
	for _, ctl := range []string{"control-up", "no-control"} {
		t.Run(ctl, func(t *testing.T) {
			srvCfg, cliCfg := relayConfigs(t)
			var causes causeLog
			cliCfg.Handler = &causes
			l := listen(t, srvCfg)
			r := newRelay(t, l)
			if ctl == "no-control" {
				r.BlockUDP(true)
			}
			c, s := pair(t, l, r.Addr().String(), cliCfg)
			if ctl == "control-up" {
				waitFor(t, "control channel", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.ch != nil })
			}
			echo(t, c, s, []byte("before"))
			c.mu.Lock()
			data := c.wconn
			c.mu.Unlock()
			dropIncoming(t, data)
			if _, err := c.Write([]byte("into the void")); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "suspension", func() bool { return causes.first() != nil })
			if err := causes.first(); !errors.Is(err, errDataStalled) {
				t.Fatalf("suspension cause %v, want %v", err, errDataStalled)
			} else {
				t.Log(err)
			}
			r.BlockUDP(false)
			s.SetReadDeadline(time.Now().Add(30 * time.Second))
			got := make([]byte, len("into the void"))
			if _, err := io.ReadFull(s, got); err != nil || string(got) != "into the void" {
				t.Fatalf("after resumption: read %q, %v", got, err)
			}
			echo(t, c, s, []byte("after"))
		})
	}
}
