//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	osexec "os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rockudp/rockudp/test/netlab"
	"github.com/rockudp/rockudp/udpnotify"
)

// The lab: the sender on 198.51.100.2, the receiver on 192.0.2.2 (or behind a NAT), both
// plugged into router r.
var (
	senderNet   = netip.MustParsePrefix("198.51.100.0/24")
	receiverNet = netip.MustParsePrefix("192.0.2.0/24")
	movedTo     = netip.MustParsePrefix("192.0.2.130/25") // another subnet: the router is renumbered too
	senderAddr  = "198.51.100.2:7000"
)

// waitLong bounds every wait for something that takes seconds at most.
const waitLong = 60 * time.Second

// agent is the example running in a lab host: the lines it printed so far.
type agent struct {
	t      testing.TB
	name   string
	cmd    *osexec.Cmd
	mu     sync.Mutex
	lines  []string
	stderr bytes.Buffer
	wake   chan struct{} // closed and replaced at every line and at exit
	exited bool
	done   chan struct{}
}

// start runs the example with args in host; it is killed when the test ends.
func start(t testing.TB, host *netlab.Host, name string, args ...string) *agent {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := host.Command(ctx, exe, args...)
	cmd.Env = append(os.Environ(), agentEnv+"=1")
	a := &agent{t: t, name: name, cmd: cmd, wake: make(chan struct{}), done: make(chan struct{})}
	cmd.Stderr = &lockedBuffer{a: a}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go a.read(out)
	t.Cleanup(func() {
		cancel()
		<-a.done
		if t.Failed() {
			t.Logf("%s output:\n%s\n%s stderr:\n%s", name, strings.Join(a.all(), "\n"), name, a.errText())
		}
	})
	return a
}

type lockedBuffer struct{ a *agent }

func (w *lockedBuffer) Write(b []byte) (int, error) {
	w.a.mu.Lock()
	defer w.a.mu.Unlock()
	return w.a.stderr.Write(b)
}

func (a *agent) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		a.mu.Lock()
		a.lines = append(a.lines, sc.Text())
		close(a.wake)
		a.wake = make(chan struct{})
		a.mu.Unlock()
	}
	a.cmd.Wait()
	a.mu.Lock()
	a.exited = true
	close(a.wake)
	a.mu.Unlock()
	close(a.done)
}

func (a *agent) all() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.lines...)
}

func (a *agent) errText() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stderr.String()
}

// waitLine waits for a line (from index from on) that matches re and returns its
// submatches and index.
func (a *agent) waitLine(re *regexp.Regexp, from int) ([]string, int) {
	a.t.Helper()
	deadline := time.After(waitLong)
	for {
		a.mu.Lock()
		for i := from; i < len(a.lines); i++ {
			if m := re.FindStringSubmatch(a.lines[i]); m != nil {
				a.mu.Unlock()
				return m, i
			}
		}
		wake, exited := a.wake, a.exited
		a.mu.Unlock()
		if exited {
			a.t.Fatalf("%s exited without printing %q", a.name, re)
		}
		select {
		case <-wake:
		case <-deadline:
			a.t.Fatalf("%s printed no %q within %v", a.name, re, waitLong)
		}
	}
}

// summary waits for the receiver to exit and returns its last line, parsed.
func (a *agent) summary() Summary {
	a.t.Helper()
	select {
	case <-a.done:
	case <-time.After(waitLong):
		a.t.Fatalf("%s did not exit", a.name)
	}
	lines := a.all()
	var s Summary
	if len(lines) == 0 || json.Unmarshal([]byte(lines[len(lines)-1]), &s) != nil {
		a.t.Fatalf("%s's last line is not the summary: %q", a.name, lines)
	}
	return s
}

var (
	reFirst    = regexp.MustCompile(`first packet `)
	reProgress = regexp.MustCompile(`^t=(\S+)s received=(\d+) `)
	reGap      = regexp.MustCompile(`^t=\S+s gap_ms=(\d+) resumed at (\S+)`)
	reMove     = regexp.MustCompile(`move to \S+: media gap_ms=(\d+)`)
	reSession  = regexp.MustCompile(`^session ([0-9a-f]{32}) from \S+ udp (\S+)`)
	reStats    = regexp.MustCompile(`^session [0-9a-f]+ stats validated=(\d+) failed=(\d+)`)
)

// received returns the last progress count printed up to line index upTo (exclusive; -1: all).
func (a *agent) received(upTo int) int {
	lines := a.all()
	if upTo >= 0 {
		lines = lines[:upTo]
	}
	for i := len(lines) - 1; i >= 0; i-- {
		if m := reProgress.FindStringSubmatch(lines[i]); m != nil {
			n, _ := strconv.Atoi(m[2])
			return n
		}
	}
	return 0
}

type world struct {
	lab              *netlab.Lab
	r, sender, recvr *netlab.Host
	link             *netlab.Link // the receiver's
	nat              *netlab.NAT
}

func newWorld(t *testing.T, behindNAT bool) *world {
	lab := netlab.New(t)
	w := &world{lab: lab, r: lab.Router("r"), sender: lab.Host("sender"), recvr: lab.Host("receiver")}
	lab.Connect(w.sender, w.r, senderNet)
	if behindNAT {
		w.nat = lab.NAT("nat", w.r, netip.MustParsePrefix("203.0.113.0/28"))
		w.link = lab.Connect(w.recvr, w.nat.Router(), receiverNet)
	} else {
		w.link = lab.Connect(w.recvr, w.r, receiverNet)
	}
	return w
}

// stream starts the sender and a receiver (extra arguments appended) and waits until the
// media flows.
func (w *world) stream(t *testing.T, duration time.Duration, sndExtra []string, extra ...string) (snd, rcv *agent) {
	snd = start(t, w.sender, "sender", append([]string{"sender", "--listen", senderAddr, "--no-auth"}, sndExtra...)...)
	snd.waitLine(regexp.MustCompile(`^listening on`), 0)
	args := append([]string{"receiver", "--sender", senderAddr, "--duration", duration.String()}, extra...)
	rcv = start(t, w.recvr, "receiver", args...)
	rcv.waitLine(reFirst, 0)
	// Two seconds of steady streaming before the fault.
	rcv.waitLine(regexp.MustCompile(`^t=2\.\d+s received=`), 0)
	return snd, rcv
}

// TestLab runs the scenarios of issue 8 in the network lab, in parallel, and writes the media
// gaps to the report "udpnotify" (see netlab.ReportDir).
func TestLab(t *testing.T) {
	report := netlab.NewReport(t, "udpnotify")

	t.Run("address-change", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, false)
		snd, rcv := w.stream(t, 10*time.Second, nil)
		old := w.link.Prefixes()[0]
		mark := len(rcv.all())
		at := time.Now()
		if err := w.link.ChangeAddr(old, movedTo); err != nil {
			t.Fatal(err)
		}
		m, _ := rcv.waitLine(regexp.MustCompile(`gap_ms=(\d+) resumed at `+regexp.QuoteMeta(movedTo.Addr().String())), mark)
		recovery := time.Since(at)
		gap, _ := strconv.Atoi(m[1])
		s := rcv.summary()
		if s.Moves < 1 {
			t.Fatalf("summary %+v: no move", s)
		}
		// The events, in order: the old address goes, the new one comes, the sender validates
		// it; the sender reports the same move.
		port := regexp.MustCompile(`session from udp \S+:(\d+) `)
		pm, _ := rcv.waitLine(port, 0)
		oldUDP := netip.AddrPortFrom(old.Addr(), mustPort(t, pm[1])).String()
		newUDP := netip.AddrPortFrom(movedTo.Addr(), mustPort(t, pm[1])).String()
		_, i := rcv.waitLine(regexp.MustCompile(`local address changed `+regexp.QuoteMeta(oldUDP)+` -> `), mark)
		_, j := rcv.waitLine(regexp.MustCompile(`local address changed \S+ -> `+regexp.QuoteMeta(newUDP)), mark)
		_, k := rcv.waitLine(regexp.MustCompile(`path validated `+regexp.QuoteMeta(oldUDP)+` -> `+regexp.QuoteMeta(newUDP)), mark)
		if !(i <= j && j < k) {
			t.Fatalf("receiver's events out of order: lines %d, %d, %d", i, j, k)
		}
		snd.waitLine(regexp.MustCompile(`peer moved `+regexp.QuoteMeta(oldUDP)+` -> `+regexp.QuoteMeta(newUDP)+`$`), 0)
		t.Logf("receiver output:\n%s\nsender output:\n%s", strings.Join(rcv.all(), "\n"), strings.Join(snd.all(), "\n"))
		t.Logf("address change %v -> %v: media gap %d ms (fault to first packet at the new address %v); summary %+v",
			old.Addr(), movedTo.Addr(), gap, recovery.Round(time.Millisecond), s)
		report.Add(netlab.Row{Scenario: "udpnotify: receiver address change (netmon)", Recovery: time.Duration(gap) * time.Millisecond,
			Notes: fmt.Sprintf("media gap %d ms; lost %d of %d packets; moves %d", gap, s.Lost, s.Received+s.Lost, s.Moves)})
	})

	t.Run("control-no-udpnotify", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, false)
		_, rcv := w.stream(t, 10*time.Second, nil, "--no-udpnotify")
		old := w.link.Prefixes()[0]
		_, i := rcv.waitLine(reProgress, len(rcv.all()))
		if err := w.link.ChangeAddr(old, movedTo); err != nil {
			t.Fatal(err)
		}
		before := rcv.received(i + 1)
		s := rcv.summary()
		for _, l := range rcv.all()[i:] {
			if reGap.MatchString(l) {
				t.Fatalf("the stream came back without udpnotify: %q", l)
			}
		}
		// At most the packets in flight during the change arrive after it.
		if int(s.Received) > before+50 {
			t.Fatalf("received %d after the move (%d before it): the control recovered", s.Received, before)
		}
		t.Logf("control: %d packets before the move, %d in all; max gap %d ms (to the end of the run)", before, s.Received, s.MaxGapMS)
		t.Logf("receiver output:\n%s", strings.Join(rcv.all(), "\n"))
		report.Add(netlab.Row{Scenario: "udpnotify control: address change without udpnotify",
			Notes: fmt.Sprintf("never recovered: %d packets before the move, %d in all, silent for the last %d ms", before, s.Received, s.MaxGapMS)})
	})

	t.Run("nat-rebinding", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, true)
		snd, rcv := w.stream(t, 16*time.Second, nil, "--keepalive", "1s")
		faults := []struct {
			name  string
			fault func() error
		}{
			{"NAT: new public ports (mappings forgotten)", w.nat.Rebind},
			{"NAT: new public address (203.0.113.2 -> 203.0.113.18)", func() error { return w.nat.SetPublic(netip.MustParsePrefix("203.0.113.18/28")) }},
		}
		for _, f := range faults {
			mark := len(rcv.all())
			if err := f.fault(); err != nil {
				t.Fatal(err)
			}
			m, i := rcv.waitLine(reMove, mark)
			gap, _ := strconv.Atoi(m[1])
			t.Logf("%s: media gap %d ms", f.name, gap)
			report.Add(netlab.Row{Scenario: "udpnotify: " + f.name, Recovery: time.Duration(gap) * time.Millisecond,
				Notes: fmt.Sprintf("media gap %d ms (keepalive every 1 s)", gap)})
			// Flowing again for a while before the next fault.
			_, j := rcv.waitLine(reProgress, i+1)
			rcv.waitLine(reProgress, j+1)
		}
		s := rcv.summary()
		if s.Moves < uint64(len(faults)) {
			t.Fatalf("summary %+v: want %d moves", s, len(faults))
		}
		t.Logf("summary %+v\nreceiver output:\n%s\nsender output:\n%s", s, strings.Join(rcv.all(), "\n"), strings.Join(snd.all(), "\n"))
	})

	t.Run("address-change-no-netmon", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, false)
		_, rcv := w.stream(t, 10*time.Second, nil, "--no-netmon")
		mark := len(rcv.all())
		if err := w.link.ChangeAddr(w.link.Prefixes()[0], movedTo); err != nil {
			t.Fatal(err)
		}
		m, _ := rcv.waitLine(regexp.MustCompile(`gap_ms=(\d+) resumed at `+regexp.QuoteMeta(movedTo.Addr().String())), mark)
		gap, _ := strconv.Atoi(m[1])
		s := rcv.summary()
		if s.Moves < 1 {
			t.Fatalf("summary %+v: no move", s)
		}
		t.Logf("address change without udpnotify's netmon: media gap %d ms; summary %+v", gap, s)
		report.Add(netlab.Row{Scenario: "udpnotify: receiver address change (no netmon in udpnotify)", Recovery: time.Duration(gap) * time.Millisecond,
			Notes: fmt.Sprintf("media gap %d ms (re-announced when the rock resumed)", gap)})
	})

	t.Run("udp-blocked-fallback", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, false)
		snd, rcv := w.stream(t, 14*time.Second, []string{"--fallback", "1s", "--max-age", "2s"})
		mark := len(rcv.all())
		if err := w.link.BlockUDP(true); err != nil {
			t.Fatal(err)
		}
		m, i := rcv.waitLine(regexp.MustCompile(`gap_ms=(\d+) resumed at .* over the rock$`), mark)
		gap, _ := strconv.Atoi(m[1])
		rcv.waitLine(regexp.MustCompile(`received=`), i+1)
		if err := w.link.BlockUDP(false); err != nil {
			t.Fatal(err)
		}
		m2, _ := rcv.waitLine(regexp.MustCompile(`gap_ms=(\d+) resumed at `+regexp.QuoteMeta(w.link.Addr().String())+` `), i+1)
		back, _ := strconv.Atoi(m2[1])
		s := rcv.summary()
		st, _ := snd.waitLine(regexp.MustCompile(`stats .* via_rock=(\d+)`), 0)
		t.Logf("UDP blocked: media over the rock after a gap of %d ms, back on UDP (gap %d ms) when unblocked; sender %s; summary %+v", gap, back, st[0], s)
		report.Add(netlab.Row{Scenario: "udpnotify: UDP blocked, fallback over the rock (--fallback 1s)", Recovery: time.Duration(gap) * time.Millisecond,
			Notes: fmt.Sprintf("media gap %d ms to the rock, %d ms back to UDP; %d datagrams via the rock", gap, back, mustAtoi(st[1]))})
	})

	t.Run("spoofed-datagrams", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, false)
		attacker := w.lab.Host("attacker")
		w.lab.Connect(attacker, w.r, netip.MustParsePrefix("203.0.113.0/24"))
		snd, rcv := w.stream(t, 8*time.Second, nil)
		m, _ := snd.waitLine(reSession, 0)
		var sid [16]byte
		hex.Decode(sid[:], []byte(m[1]))
		ua := netip.MustParseAddrPort(m[2])
		to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("198.51.100.2"), ua.Port()))

		pc, err := attacker.ListenPacket("udp4", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		got := make(chan []byte, 100)
		go func() {
			defer close(got)
			b := make([]byte, 2048)
			for {
				n, _, err := pc.ReadFrom(b)
				if err != nil {
					return
				}
				got <- append([]byte(nil), b[:n]...)
			}
		}()
		// Someone who saw the receiver's keepalive sends it from its own address, along with
		// made-up echoes, to make the sender follow it.
		ka := udpnotify.AppendDatagram(nil, udpnotify.Datagram{Type: udpnotify.DgKeepalive, SessionID: sid})
		echo := udpnotify.AppendDatagram(nil, udpnotify.Datagram{Type: udpnotify.DgEcho, SessionID: sid, Nonce: [8]byte{1}, Token: [16]byte{1}})
		for range 5 {
			pc.WriteTo(ka, to)
			pc.WriteTo(echo, to)
		}
		s := rcv.summary()
		st, _ := snd.waitLine(reStats, 0)
		failed, _ := strconv.Atoi(st[2])
		pc.Close()
		probes := 0
		for b := range got {
			if !udpnotify.IsControl(b) {
				t.Fatalf("the attacker received %d bytes of media", len(b))
			}
			probes++
		}
		for _, l := range snd.all() {
			if strings.Contains(l, "peer moved") && strings.Contains(l, "-> 203.0.113.") {
				t.Fatalf("the sender followed the attacker: %q", l)
			}
		}
		if failed < 1 || s.Moves != 0 {
			t.Fatalf("failed validations %d, summary %+v", failed, s)
		}
		if !strings.Contains(snd.errText(), "path validation failed") {
			t.Fatal("the failed validation was not logged")
		}
		if s.Lost*10 > s.Received+s.Lost {
			t.Fatalf("summary %+v: the stream suffered", s)
		}
		t.Logf("spoofing: %d failed validations, the attacker got %d probes and no media; receiver %+v", failed, probes, s)
		report.Add(netlab.Row{Scenario: "udpnotify: spoofed keepalives from a third host",
			Notes: fmt.Sprintf("never redirected: %d failed validations, %d probes and no media to the attacker, %d packets lost", failed, probes, s.Lost)})
	})
}

func mustPort(t testing.TB, s string) uint16 {
	t.Helper()
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	return uint16(p)
}

func mustAtoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
