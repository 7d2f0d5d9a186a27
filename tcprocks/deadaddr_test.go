//go:build linux

package tcprocks

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/internal/relay"
)

// silentPort makes connects to addr hang, as they do to a host that has gone: a listening
// socket with a backlog of 0 whose one queue slot is taken, so the kernel drops every further
// SYN. It is closed at the end of the test, or earlier by the returned function.
func silentPort(t *testing.T, addr string) (release func()) {
	t.Helper()
	var conns []net.Conn
	release = func() {
		for _, c := range conns {
			c.Close()
		}
		conns = nil
	}
	t.Cleanup(func() { release() })
	ap := netip.MustParseAddrPort(addr)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeFD := sync.OnceFunc(func() { unix.Close(fd) })
	t.Cleanup(closeFD)
	inner := release
	release = func() { inner(); closeFD() }
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		t.Fatalf("taking %s: %v", addr, err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	// Fill the queue until a connect times out.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return release
		}
		conns = append(conns, c)
		if i == 10 {
			t.Fatalf("%s still accepts connections", addr)
		}
	}
}

// TestDeadLastAddress: the peer moved and its old address swallows connects. The rock must
// not spend its resume timeout on the old address before it tries the alternate: connects
// to the targets race (Happy Eyeballs), so it resumes long before ResumeTimeout.
func TestDeadLastAddress(t *testing.T) {
	srvCfg, cliCfg := relayConfigs(t)
	cliCfg.ResumeTimeout = 60 * time.Second
	l := listen(t, srvCfg)
	r1 := newRelay(t, l)
	var evs eventLog
	cliCfg.Handler = &evs
	c, s := pair(t, l, r1.Addr().String(), cliCfg)
	waitFor(t, "control channel", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.ch != nil })
	echo(t, c, s, []byte("one"))
	c.SetAlternates(l.Addr().String())
	old := r1.Addr().String()
	r1.Close()
	silentPort(t, old)
	start := time.Now()
	waitForLong(t, "resumption at the alternate", 2*cliCfg.ResumeTimeout, func() bool { return evs.count(callbacks.Resumed) == 1 })
	took := time.Since(start)
	echo(t, c, s, []byte("two"))
	t.Logf("resumed at the alternate %v after the old address went silent (resume timeout %v)", took.Round(time.Millisecond), cliCfg.ResumeTimeout)
	if took >= cliCfg.ResumeTimeout/2 {
		t.Fatalf("took %v: the dead address held the attempt for most of the resume timeout (%v)", took, cliCfg.ResumeTimeout)
	}
}

// TestSilentPathReturns: the peer's address swallowed SYNs for a while (a silent outage) and
// answers again. The pending connect would wait for the kernel's next SYN retransmission
// (3 s, 7 s, 15 s after it began); a fresh connect every raceRedial finds the path at once.
func TestSilentPathReturns(t *testing.T) {
	srvCfg, cliCfg := relayConfigs(t)
	cliCfg.ResumeTimeout = 60 * time.Second
	l := listen(t, srvCfg)
	r1 := newRelay(t, l)
	var r2 *relay.Relay // the path's return; closed after the rocks (cleanups run last first)
	t.Cleanup(func() {
		if r2 != nil {
			r2.Close()
		}
	})
	var evs eventLog
	cliCfg.Handler = &evs
	c, s := pair(t, l, r1.Addr().String(), cliCfg)
	waitFor(t, "control channel", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.ch != nil })
	echo(t, c, s, []byte("one"))
	addr := r1.Addr().String()
	r1.Close()
	release := silentPort(t, addr)
	waitFor(t, "a reconnection attempt", func() bool { return evs.count(callbacks.Reconnecting) >= 1 })
	// Past the connect's second SYN (1 s): its next one leaves 3 s after it began.
	time.Sleep(3500 * time.Millisecond) // the outage's prescribed length
	release()
	var err error
	r2, err = relay.New(l.Addr().String(), &relay.Config{Listen: addr, CutLinger: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("relay on %s again: %v", addr, err)
	}
	start := time.Now()
	waitForLong(t, "resumption", time.Minute, func() bool { return evs.count(callbacks.Resumed) == 1 })
	took := time.Since(start)
	echo(t, c, s, []byte("two"))
	t.Logf("resumed %v after the path returned (a hanging connect's next SYN would have left 3.5 s later)", took.Round(time.Millisecond))
	if took >= 2500*time.Millisecond {
		t.Fatalf("took %v: the rock waited for the old connect's SYN retransmission", took)
	}
}
