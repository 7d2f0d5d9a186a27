//go:build linux

package tcprocks

import (
	"bytes"
	"context"
	"io"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rockudp/rockudp/test/netlab"
)

// TestNetworkChangesInLab: a client agent in a lab namespace holds a rock to a listener in
// another namespace. Removing the client's address suspends the rock at once (cause "local
// address removed", long before its heartbeats could tell); a new address, once its default
// route is back, makes the suspended rock reconnect at once although its backoff has grown to
// a second. The echoed stream stays byte-exact throughout. Times are logged and compared with
// the heartbeat timeout (Misses × Interval) as ratios.
func TestNetworkChangesInLab(t *testing.T) {
	lab := netlab.New(t)
	router := lab.Router("r")
	cliHost, srvHost := lab.Host("client"), lab.Host("server")
	link := lab.Connect(cliHost, router, netip.MustParsePrefix("192.0.2.0/25"))
	lab.Connect(srvHost, router, netip.MustParsePrefix("198.51.100.0/24"))

	srvCfg := &Config{IgnoreNetworkChanges: true} // the test process is not in the lab
	var l *Listener
	if err := srvHost.Do(func() (err error) {
		l, err = Listen("tcp", "198.51.100.2:7000", srvCfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); waitListener(t, l) })

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agent := startAgent(t, cliHost.Command(ctx, exe, "-addr", "198.51.100.2:7000"), roleEcho)
	conn := agent.expect(t, "the rock", time.Minute, ev("connected"))
	t.Logf("client rock %s -> %s", conn.Local, conn.Remote)
	s, err := l.AcceptConn()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); waitDone(t, s) })

	// The server writes the stream in rounds; the agent echoes it.
	var sent int64
	round := func(n int) {
		t.Helper()
		s.SetDeadline(time.Now().Add(time.Minute))
		defer s.SetDeadline(time.Time{})
		want := pattern(seedDown, uint64(sent), n)
		errc := make(chan error, 1)
		go func() { _, err := s.Write(want); errc <- err }()
		got := make([]byte, n)
		if _, err := io.ReadFull(s, got); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("echo of bytes %d..%d differs", sent, sent+int64(n))
		}
		sent += int64(n)
	}
	round(256 << 10)

	p := s.Policy()
	hbTimeout := p.HeartbeatInterval * time.Duration(p.MissedHeartbeats)
	iface := link.Interface()

	// 1. Remove the address.
	t0 := time.Now()
	if _, err := cliHost.Run(ctx, "ip", "addr", "del", "192.0.2.2/25", "dev", iface); err != nil {
		t.Fatal(err)
	}
	susp := agent.expect(t, "suspension", time.Minute, ev("suspended"))
	detect := time.Duration(susp.T - t0.UnixNano())
	t.Logf("address removed -> Suspended in %v (%.3f of the heartbeat timeout %v); cause %q", detect, detect.Seconds()/hbTimeout.Seconds(), hbTimeout, susp.Cause)
	if !strings.Contains(susp.Cause, ErrAddressRemoved.Error()) {
		// The QUIC control channel can die of the removal within the same milliseconds
		// (sending fails); TestNetChanged checks the monitor's part on its own.
		t.Logf("the control channel noticed first: %q", susp.Cause)
	}
	if detect > hbTimeout/4 {
		t.Errorf("suspension took %v, more than a quarter of the heartbeat timeout", detect)
	}

	// 2. While no address exists the attempts fail and the backoff grows to its 1 s cap
	// (50 ms doubling: from the sixth attempt on).
	agent.expect(t, "attempts with a grown backoff", time.Minute, func(l agentLine) bool { return l.Ev == "reconnecting" && l.Attempt >= 7 })
	// Bytes written while suspended are delivered after the resumption.
	pending := make(chan error, 1)
	go func() { _, err := s.Write(pattern(seedDown, uint64(sent), 64<<10)); pending <- err }()

	// 3. A new address and its default route.
	// The default route may outlive the address; a reconnection can begin as soon as the
	// address is there, so the time counts from the address.
	if _, err := cliHost.Run(ctx, "ip", "addr", "add", "192.0.2.77/25", "dev", iface); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	if _, err := cliHost.Run(ctx, "ip", "route", "replace", "default", "via", "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	res := agent.expect(t, "resumption", time.Minute, ev("resumed"))
	recovery := time.Duration(res.T - t1.UnixNano())
	t.Logf("new address added -> Resumed in %v (%.3f of the heartbeat timeout); local %s", recovery, recovery.Seconds()/hbTimeout.Seconds(), res.Local)
	if !strings.HasPrefix(res.Local, "192.0.2.77:") {
		t.Errorf("resumed from %s, want the new address", res.Local)
	}
	if recovery > hbTimeout/2 {
		t.Errorf("reconnection took %v, more than half the heartbeat timeout (the backoff alone allows 1 s)", recovery)
	}
	got := make([]byte, 64<<10)
	s.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadFull(s, got); err != nil {
		t.Fatal(err)
	}
	if err := <-pending; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pattern(seedDown, uint64(sent), 64<<10)) {
		t.Fatal("bytes written while suspended came back wrong")
	}
	sent += 64 << 10
	round(256 << 10)
	agent.stdin.Close()
	agent.expect(t, "the agent's rock to close", time.Minute, ev("closed"))
}
