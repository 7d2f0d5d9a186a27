//go:build linux

package mobility

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rockudp/rockudp/test/netlab"
)

// Addresses of every lab: the server is dual-stack behind router r; the client starts on an
// IPv4 subnet of its own.
var (
	serverNet4  = netip.MustParsePrefix("198.51.100.0/24") // server 198.51.100.2
	serverNet6  = netip.MustParsePrefix("2001:db8:5::/64") // server 2001:db8:5::2
	clientNet   = netip.MustParsePrefix("192.0.2.0/25")    // client 192.0.2.2
	serverAddr  = "198.51.100.2:" + serverPort
	serverAddr6 = "[2001:db8:5::2]:" + serverPort
)

// Streaming rates (bytes per second, each direction).
const (
	rate      = 512 << 10
	lossyRate = 16 << 10
)

// world is the common topology: server and client hosts on one router.
type world struct {
	lab            *netlab.Lab
	r              *netlab.Host
	server, client *netlab.Host
	clientLink     *netlab.Link
}

// newWorld builds the common topology. Unless connectClient is set, the client is left
// unconnected for the scenario to connect.
func newWorld(t *testing.T, connectClient bool) *world {
	lab := netlab.New(t)
	w := &world{lab: lab, r: lab.Router("r"), server: lab.Host("server"), client: lab.Host("client")}
	lab.Connect(w.server, w.r, serverNet4, serverNet6)
	if connectClient {
		w.clientLink = lab.Connect(w.client, w.r, clientNet)
	}
	return w
}

// TestMobility runs the scenarios of issue 4 in parallel, each in a lab of its own, and writes
// their figures to the report "mobility" (see netlab.ReportDir).
func TestMobility(t *testing.T) {
	report := netlab.NewReport(t, "mobility")
	// Rows are collected as the scenarios end and added in scenario order when all have ended
	// (this cleanup runs before the report's, which writes it).
	var (
		rowsMu sync.Mutex
		rows   []netlab.Row
	)
	row := func(r netlab.Row) {
		rowsMu.Lock()
		defer rowsMu.Unlock()
		rows = append(rows, r)
	}
	t.Cleanup(func() {
		slices.SortStableFunc(rows, func(a, b netlab.Row) int { return strings.Compare(a.Scenario, b.Scenario) })
		for _, r := range rows {
			report.Add(r)
		}
	})
	add := func(scenario string, m measurement, verified int64) {
		row(netlab.Row{Scenario: scenario, Detection: m.detection, Recovery: m.recovery,
			BytesReplayed: m.replayed, BytesVerified: verified,
			Notes: strings.Join(append([]string{"detected by " + m.detectedBy}, m.notes...), "; ")})
	}

	// The longest scenarios first: go test runs -parallel (GOMAXPROCS) of them at once, in
	// about this order, so the short ones fill in beside the 3- and 2-minute outages.
	t.Run("8-disconnect-3min", func(t *testing.T) {
		t.Parallel()
		disconnect(t, 3*time.Minute, add)
	})

	t.Run("4-suspend-2min", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, true)
		p := startPair(t, w.server, w.client, serverAddr, rate)
		m := p.inject(outage{
			fault:        func() error { return p.cli.signal(syscall.SIGSTOP) },
			hold:         2 * time.Minute,
			restore:      func() error { return p.cli.signal(syscall.SIGCONT) },
			detectWithin: true,
		})
		add("4. laptop suspension: client stopped (SIGSTOP) 2 min", m, p.finish(2*time.Minute))
	})

	t.Run("5-lossy-outages", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, true)
		// The rock starts on a clean link: over this one the EDP probe itself can be taken for
		// an ordinary client (see docs/mobility.md); resumptions skip the probe.
		p := startPair(t, w.server, w.client, serverAddr, lossyRate)
		if err := w.clientLink.SetLoss(5); err != nil {
			t.Fatal(err)
		}
		if err := w.clientLink.SetDelay(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		p.flowing()
		// Three detected outages. An outage that begins before the control channel of the
		// last resumption is up goes unnoticed (the rock has no heartbeats to miss; TCP
		// carries on after it): it is reported, and another one is made, up to six in all.
		var ms []measurement
		var missed []string
		for i := 1; len(ms) < 3 && i <= 6; i++ {
			p.flowing() // a little more time for the control channel
			m := p.inject(outage{
				fault:          func() error { return w.clientLink.BlockAll(true) },
				hold:           5 * time.Second,
				restore:        func() error { return w.clientLink.BlockAll(false) },
				mayRideThrough: true,
			})
			if m.undetected {
				missed = append(missed, fmt.Sprint(i))
				continue
			}
			ms = append(ms, m)
		}
		if len(ms) < 3 {
			t.Errorf("only %d of 6 outages detected", len(ms))
		}
		verified := p.finish(5 * time.Minute)
		for i, m := range ms {
			v := int64(0)
			if i == len(ms)-1 {
				v = verified // the whole transfer, on the last row
				if len(missed) > 0 {
					m.notes = append(m.notes, "outages not detected (no control channel yet): "+strings.Join(missed, ", "))
				}
			}
			add(fmt.Sprintf("5. 5 %% loss, 100 ms delay: 5 s outage %d of 3", i+1), m, v)
		}
	})

	t.Run("2-link-down-30s", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, true)
		p := startPair(t, w.server, w.client, serverAddr, rate)
		m := p.inject(outage{fault: w.clientLink.Down, hold: 30 * time.Second, restore: w.clientLink.Up, detectWithin: true})
		add("2. client link down 30 s, same address", m, p.finish(2*time.Minute))
	})

	t.Run("1-address-change", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, true)
		p := startPair(t, w.server, w.client, serverAddr, rate)
		plain := dialPlain(t, w.server, w.client, "198.51.100.2:7001")
		old, moved := w.clientLink.Prefixes()[0], netip.MustParsePrefix("192.0.2.130/25")
		change := func() error { return w.clientLink.ChangeAddr(old, moved) }
		const scenario = "1. address change (192.0.2.2 -> 192.0.2.130, other subnet)"
		m := p.inject(outage{fault: change})
		control := plain.mustDie(t)
		add(scenario, m, p.finish(2*time.Minute))
		row(netlab.Row{Scenario: "9. control: plain TCP in scenario 1", Notes: control})
	})

	t.Run("3-nat-rebinding", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, false)
		nat := w.lab.NAT("nat", w.r, netip.MustParsePrefix("203.0.113.0/28"))
		w.lab.Connect(w.client, nat.Router(), netip.MustParsePrefix("192.0.2.0/24"))
		p := startPair(t, w.server, w.client, serverAddr, rate)
		plain := dialPlain(t, w.server, w.client, "198.51.100.2:7001")
		// The mapping changes twice: a new public address (a new DHCP lease on the NAT's
		// uplink), then new public ports (the NAT forgets its mappings).
		addr := p.inject(outage{fault: func() error { return nat.SetPublic(netip.MustParsePrefix("203.0.113.18/28")) }})
		port := p.inject(outage{fault: nat.Rebind})
		control := plain.mustDie(t)
		verified := p.finish(2 * time.Minute)
		add("3a. NAT: new public address (203.0.113.2 -> 203.0.113.18)", addr, 0)
		add("3b. NAT: new public ports (mappings forgotten)", port, verified)
		row(netlab.Row{Scenario: "9. control: plain TCP in scenario 3", Notes: control})
	})

	t.Run("6-udp-blocked", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, true)
		p := startPair(t, w.server, w.client, serverAddr, rate)
		// The client moves to a network that drops every UDP datagram: after the
		// reconnection its control channel's QUIC handshake cannot complete, and the
		// control channel falls back to a second TCP connection.
		old, moved := w.clientLink.Prefixes()[0], netip.MustParsePrefix("192.0.2.130/25")
		move := p.inject(outage{fault: func() error {
			if err := w.clientLink.BlockUDP(true); err != nil {
				return err
			}
			return w.clientLink.ChangeAddr(old, moved)
		}})
		// Time for the control channel: a QUIC attempt (1 s), then TCP.
		for range 3 {
			p.flowing()
		}
		// Then the client stops on that network. Its kernel keeps acknowledging the server's
		// data, so the data path looks healthy: only the control channel's heartbeats, which
		// now travel over TCP, can reveal it.
		stop := p.inject(outage{
			fault:        func() error { return p.cli.signal(syscall.SIGSTOP) },
			hold:         10 * time.Second,
			restore:      func() error { return p.cli.signal(syscall.SIGCONT) },
			detectWithin: true,
		})
		add("6a. move to a network that drops UDP (control channel falls back to TCP)", move, 0)
		add("6b. UDP blocked: client stopped (SIGSTOP) 10 s, detected over the TCP control channel", stop, p.finish(2*time.Minute))
	})

	t.Run("7-ipv4-to-ipv6", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, true)
		// An IPv6-only network: router r6 behind r.
		r6 := w.lab.Router("r6")
		w.lab.Connect(r6, w.r, netip.MustParsePrefix("2001:db8:ff::/64"))
		v6net := netip.MustParsePrefix("2001:db8:7::/64")
		if _, err := w.r.Run(t.Context(), "ip", "-6", "route", "add", v6net.String(), "via", "2001:db8:ff::2"); err != nil {
			t.Fatal(err)
		}
		p := startPair(t, w.server, w.client, serverAddr, rate, serverAddr6)
		start := time.Now().UnixNano()
		m := p.inject(outage{fault: func() error { return w.clientLink.MoveTo(r6, v6net) }})
		resumed := p.cli.events("resumed", start)
		if len(resumed) == 0 || !strings.HasPrefix(resumed[len(resumed)-1].Remote, "[2001:db8:5::2]") {
			t.Errorf("client resumed to %+v, want the server's IPv6 address %s", resumed, serverAddr6)
		}
		add("7. IPv4-only network -> IPv6-only network (alternate address)", m, p.finish(2*time.Minute))
	})

	t.Run("8-soak-disconnect-30min", func(t *testing.T) {
		if os.Getenv("ROCKUDP_SOAK") != "1" {
			t.Skip("soak: set ROCKUDP_SOAK=1 (and go test -timeout 60m) for a 30-minute disconnection")
		}
		if d, ok := t.Deadline(); ok && time.Until(d) < 40*time.Minute {
			t.Fatalf("soak: needs 40 minutes, the test binary times out in %v: run go test -timeout 60m", time.Until(d).Round(time.Second))
		}
		t.Parallel()
		disconnect(t, 30*time.Minute, add)
	})
}

// disconnect is scenario 8: the client's link silently drops everything for d.
func disconnect(t *testing.T, d time.Duration, add func(string, measurement, int64)) {
	w := newWorld(t, true)
	p := startPair(t, w.server, w.client, serverAddr, rate)
	m := p.inject(outage{
		fault:        func() error { return w.clientLink.BlockAll(true) },
		hold:         d,
		restore:      func() error { return w.clientLink.BlockAll(false) },
		detectWithin: true,
	})
	add(fmt.Sprintf("8. disconnection (all traffic dropped) %v", d), m, p.finish(3*time.Minute))
}

// plainConn is a plain TCP connection between two lab hosts, for the control case: it must
// not survive the faults rocks survive.
type plainConn struct {
	cli, srv net.Conn
}

// userTimeout makes the kernel abort a connection whose sent data stays unacknowledged this
// long (TCP_USER_TIMEOUT), so that a broken plain connection fails within seconds instead of
// retransmitting for a quarter of an hour.
const userTimeout = 5 * time.Second

func setUserTimeout(rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(userTimeout/time.Millisecond))
	})
	if err != nil {
		return err
	}
	return serr
}

// tcpUserTimeout is TCP_USER_TIMEOUT (linux/tcp.h).
const tcpUserTimeout = 18

// dialPlain connects client to a plain TCP listener on server (addr is its address as the
// client reaches it) and checks that it carries data both ways.
func dialPlain(t *testing.T, server, client *netlab.Host, addr string) *plainConn {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	ln, err := server.Listen("tcp", ":"+port)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var c net.Conn
	err = client.Do(func() (err error) {
		d := net.Dialer{Timeout: 30 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error { return setUserTimeout(rc) }}
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	rc, err := s.(*net.TCPConn).SyscallConn()
	if err == nil {
		err = setUserTimeout(rc)
	}
	if err != nil {
		t.Fatal(err)
	}
	pc := &plainConn{cli: c, srv: s}
	if errs := pc.exchange("before", 30*time.Second); errs[0] != nil || errs[1] != nil {
		t.Fatalf("control: plain TCP does not work before the fault: %v", errs)
	}
	return pc
}

// exchange sends msg both ways at once and returns the errors of client->server and
// server->client (nil: msg arrived).
func (pc *plainConn) exchange(msg string, timeout time.Duration) [2]error {
	var errs [2]error
	done := make(chan struct{})
	dir := func(i int, from, to net.Conn) {
		defer func() { done <- struct{}{} }()
		if _, err := from.Write([]byte(msg)); err != nil {
			errs[i] = fmt.Errorf("write: %w", err)
			return
		}
		to.SetReadDeadline(time.Now().Add(timeout))
		buf := make([]byte, len(msg))
		n := 0
		for n < len(buf) {
			m, err := to.Read(buf[n:])
			n += m
			if err != nil {
				errs[i] = fmt.Errorf("read: %w", err)
				return
			}
		}
		if string(buf) != msg {
			errs[i] = fmt.Errorf("read %q, want %q", buf, msg)
		}
	}
	go dir(0, pc.cli, pc.srv)
	go dir(1, pc.srv, pc.cli)
	<-done
	<-done
	return errs
}

// mustDie checks that the plain connection no longer carries data in either direction, which
// proves the fault was real, and describes what happened.
func (pc *plainConn) mustDie(t *testing.T) string {
	t.Helper()
	errs := pc.exchange("after", userTimeout+time.Minute)
	if errs[0] == nil || errs[1] == nil {
		t.Errorf("control: plain TCP survived the fault (client->server: %v, server->client: %v): the lab did not break the path", errs[0], errs[1])
		return "SURVIVED (the fault was not real)"
	}
	t.Logf("control: plain TCP died as it should: client->server: %v; server->client: %v", errs[0], errs[1])
	return fmt.Sprintf("did not survive, as expected: client->server %v; server->client %v", errs[0], errs[1])
}
