//go:build linux

package mobility

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rockudp/rockudp/test/netlab"
)

// serverPort is the rock server's port in every lab.
const serverPort = "7000"

// proc is a running agent process, seen from the test: the lines it printed so far.
type proc struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	in   io.WriteCloser

	mu      sync.Mutex
	changed chan struct{} // closed and replaced at every new line and at exit
	lines   []line
	last    line // the latest progress or done line
	exited  bool
	waitErr error
	stderr  bytes.Buffer

	readDone chan struct{}
}

// startAgent starts an agent of role in host with the agent arguments args; it is stopped
// (and killed if need be) when the test ends.
func startAgent(t testing.TB, host *netlab.Host, role string, args ...string) *proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := host.Command(ctx, exe, args...)
	cmd.Env = append(os.Environ(), agentEnv+"="+role)
	p := &proc{t: t, name: role, cmd: cmd, changed: make(chan struct{}), readDone: make(chan struct{})}
	cmd.Stderr = &lockedWriter{p: p}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go p.read(stdout)
	t.Cleanup(func() {
		if t.Failed() || t.Skipped() {
			cancel() // no graceful end: it could wait for a dead network
		}
		p.in.Close()
		select {
		case <-p.readDone:
		case <-time.After(30 * time.Second):
			t.Errorf("%s agent still running 30 s after the test: killed", p.name)
			cancel()
			<-p.readDone
		}
		cancel()
	})
	return p
}

// lockedWriter collects an agent's standard error.
type lockedWriter struct{ p *proc }

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	if w.p.stderr.Len() < 1<<20 {
		w.p.stderr.Write(b)
	}
	return len(b), nil
}

// read collects the agent's lines until it exits, then waits for it.
func (p *proc) read(stdout io.Reader) {
	defer close(p.readDone)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			l = line{Ev: evError, T: time.Now().UnixNano(), Err: "unparsable line: " + sc.Text()}
		}
		if l.Ev != evProgress && l.Ev != "reconnecting" {
			p.t.Logf("%s agent: %s", p.name, sc.Bytes())
		}
		p.mu.Lock()
		if l.Ev == evProgress || l.Ev == evDone {
			p.last = l
		}
		if l.Ev != evProgress {
			p.lines = append(p.lines, l)
		}
		p.notify()
		p.mu.Unlock()
	}
	err := p.cmd.Wait()
	p.mu.Lock()
	p.exited, p.waitErr = true, err
	p.notify()
	p.mu.Unlock()
}

func (p *proc) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// send writes a command line to the agent.
func (p *proc) send(cmd string) {
	p.t.Helper()
	if _, err := io.WriteString(p.in, cmd+"\n"); err != nil {
		p.t.Fatalf("%s agent: command %q: %v", p.name, cmd, err)
	}
}

// waitFor waits until cond is true, re-checking it whenever one of the agents ps (one or
// two) prints a line; it fails the test after timeout, or if an agent exits first.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool, ps ...*proc) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		var chs [2]chan struct{}
		for i, p := range ps {
			p.mu.Lock()
			exited, err := p.exited, p.waitErr
			chs[i] = p.changed
			p.mu.Unlock()
			if exited && !cond() {
				t.Fatalf("%s agent exited (%v) before %s; stderr:\n%s", p.name, err, what, p.stderrText())
			}
		}
		if cond() {
			return
		}
		if len(ps) == 1 {
			chs[1] = chs[0]
		}
		select {
		case <-chs[0]:
		case <-chs[1]:
		case <-deadline.C:
			var state []string
			for _, p := range ps {
				c := p.counters()
				state = append(state, fmt.Sprintf("%s sent %d, received %d", p.name, c.Sent, c.Recv))
			}
			t.Fatalf("no %s within %v (%s)", what, timeout, strings.Join(state, "; "))
		}
	}
}

func (p *proc) stderrText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// counters returns the latest progress (or done) line.
func (p *proc) counters() line {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// events returns the agent's lines of kind ev at or after time from (Unix nanoseconds).
func (p *proc) events(ev string, from int64) []line {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ls []line
	for _, l := range p.lines {
		if l.Ev == ev && l.T >= from {
			ls = append(ls, l)
		}
	}
	return ls
}

// has reports whether the agent printed a line of kind ev at or after from.
func (p *proc) has(ev string, from int64) bool { return len(p.events(ev, from)) > 0 }

// settled reports whether the agent is connected after from: it has printed no suspension
// since from, or a resumption after its last one.
func (p *proc) settled(from int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	state := "resumed"
	for _, l := range p.lines {
		if l.T >= from && (l.Ev == "suspended" || l.Ev == "resumed") {
			state = l.Ev
		}
	}
	return state == "resumed"
}

// hasExited reports whether the agent process has ended.
func (p *proc) hasExited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exited
}

// before returns the lines of ls dated no later than t.
func before(ls []line, t int64) []line {
	return slices.DeleteFunc(ls, func(l line) bool { return l.T > t })
}

// exitErr returns the agent process's exit error (nil: exit status 0).
func (p *proc) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// signal sends sig to the agent process.
func (p *proc) signal(sig syscall.Signal) error {
	return p.cmd.Process.Signal(sig)
}

// pair is a rock between a server agent and a client agent.
type pair struct {
	t        *testing.T
	srv, cli *proc
	minFlow  int64 // bytes each end must receive to show that data flows
}

// startPair starts a server agent in server and a client agent in client that dials dial
// (with the alternate server addresses alternates), each sending rate bytes per second, and
// waits until data flows both ways.
func startPair(t *testing.T, server, client *netlab.Host, dial string, rate int, alternates ...string) *pair {
	t.Helper()
	srv := startAgent(t, server, "server", "-addr=:"+serverPort, fmt.Sprint("-rate=", rate))
	waitFor(t, "listening server", time.Minute, func() bool { return srv.has(evListening, 0) }, srv)
	args := []string{"-addr=" + dial, fmt.Sprint("-rate=", rate)}
	if len(alternates) > 0 {
		args = append(args, "-alternates="+strings.Join(alternates, ","))
	}
	cli := startAgent(t, client, "client", args...)
	p := &pair{t: t, srv: srv, cli: cli, minFlow: int64(max(rate, 32<<10))}
	p.flowing()
	return p
}

// flowing waits until both ends have received minFlow more bytes than they had.
func (p *pair) flowing() {
	p.t.Helper()
	for _, a := range []*proc{p.cli, p.srv} {
		want := a.counters().Recv + p.minFlow
		waitFor(p.t, fmt.Sprintf("data flowing (%s: %d bytes received)", a.name, want), 3*time.Minute, func() bool { return a.counters().Recv >= want }, a)
	}
}

// outage is one fault: the lab breaks something (fault), leaves it broken for hold, and
// mends it (restore, which may be nil when the fault mends itself, as an address change does).
type outage struct {
	fault, restore func() error
	hold           time.Duration
	// detectWithin, when set, requires a suspension while the fault holds.
	detectWithin bool
	// mayRideThrough, when set, accepts an outage the rock does not notice: if data flows
	// again at both ends after restore with no suspension since the fault, the measurement
	// says undetected (TCP retransmitted through it) instead of failing the test.
	mayRideThrough bool
}

// measurement is what one outage did to the rock.
type measurement struct {
	detection, recovery time.Duration
	replayed            int64
	detectedBy          string // the end that noticed first
	undetected          bool   // see outage.mayRideThrough
	notes               []string
}

// inject runs o and waits until the rock has resumed at both ends and data flows again.
func (p *pair) inject(o outage) measurement {
	p.t.Helper()
	start := time.Now()
	t0 := start.UnixNano()
	if err := o.fault(); err != nil {
		p.t.Fatalf("fault: %v", err)
	}
	if o.detectWithin {
		waitFor(p.t, "suspension during the fault", o.hold+time.Minute, func() bool {
			return p.srv.has("suspended", t0) || p.cli.has("suspended", t0)
		}, p.srv, p.cli)
	}
	time.Sleep(time.Until(start.Add(o.hold)))
	if o.restore != nil {
		if err := o.restore(); err != nil {
			p.t.Fatalf("restore: %v", err)
		}
	}
	restored := time.Now()
	if o.mayRideThrough && !p.srv.has("suspended", t0) && !p.cli.has("suspended", t0) {
		// Data flowing again with no suspension means the rock rode through: a rock that
		// heard heartbeats when the fault began would have suspended during it.
		p.flowing()
		if !p.srv.has("suspended", t0) && !p.cli.has("suspended", t0) {
			p.t.Logf("outage: not detected; the stream carried on after it without a suspension")
			return measurement{undetected: true}
		}
	}
	// Wait for a suspension (if none came during the fault), then until every end that
	// suspended has resumed.
	waitFor(p.t, "suspension", 2*time.Minute, func() bool {
		return p.srv.has("suspended", t0) || p.cli.has("suspended", t0)
	}, p.srv, p.cli)
	waitFor(p.t, "resumption", 3*time.Minute, func() bool {
		return p.srv.settled(t0) && p.cli.settled(t0) && (p.srv.has("resumed", t0) || p.cli.has("resumed", t0))
	}, p.srv, p.cli)
	// The outage's events end here; a later suspension (a lossy link's) is not its doing.
	settled := time.Now().UnixNano()
	p.flowing()

	var m measurement
	first := int64(0)
	var lastResume int64
	for _, a := range []*proc{p.cli, p.srv} {
		sus := before(a.events("suspended", t0), settled)
		if len(sus) > 0 && (first == 0 || sus[0].T < first) {
			first, m.detectedBy = sus[0].T, a.name
		}
		for _, r := range before(a.events("resumed", t0), settled) {
			m.replayed += r.Replayed
			lastResume = max(lastResume, r.T)
		}
		if len(sus) > 1 {
			m.notes = append(m.notes, fmt.Sprintf("%s suspended %d times", a.name, len(sus)))
		}
		if len(sus) > 0 {
			m.notes = append(m.notes, fmt.Sprintf("%s: %s", a.name, sus[0].Cause))
		}
	}
	m.detection = time.Duration(first - t0)
	m.recovery = time.Duration(lastResume - restored.UnixNano())
	if m.recovery < 0 {
		m.notes = append(m.notes, fmt.Sprintf("resumed %v before the lab finished restoring", -m.recovery))
		m.recovery = 0
	}
	p.t.Logf("outage: detected after %v by %s, recovered %v after restoration, %d bytes replayed", m.detection, m.detectedBy, m.recovery, m.replayed)
	return m
}

// finish stops both streams, checks that each end received exactly what the other sent
// (counts and SHA-256), waits for both agents to close their rocks and exit, and returns
// the bytes verified in both directions.
func (p *pair) finish(timeout time.Duration) int64 {
	p.t.Helper()
	p.cli.send("stop")
	p.srv.send("stop")
	var done [2]line
	for i, a := range []*proc{p.cli, p.srv} {
		waitFor(p.t, a.name+" end of the streams", timeout, func() bool { return a.has(evDone, 0) }, a)
		done[i] = a.events(evDone, 0)[0]
	}
	cli, srv := done[0], done[1]
	for _, c := range []struct {
		dir        string
		from, to   line
		fromN, toN string
	}{{"client->server", cli, srv, "client", "server"}, {"server->client", srv, cli, "server", "client"}} {
		if c.from.Sent == 0 || c.from.Sent != c.to.Recv || c.from.SentSHA != c.to.RecvSHA {
			p.t.Errorf("%s: %s sent %d bytes (SHA-256 %s), %s received %d (SHA-256 %s)",
				c.dir, c.fromN, c.from.Sent, c.from.SentSHA, c.toN, c.to.Recv, c.to.RecvSHA)
		}
		if c.to.Mismatch != 0 || c.to.Verified != c.to.Recv {
			p.t.Errorf("%s: %s received a wrong byte at offset %d (%d bytes verified of %d)", c.dir, c.toN, c.to.Mismatch-1, c.to.Verified, c.to.Recv)
		}
	}
	// The client exits once its rock has closed; the server's listener stays up until then.
	for _, a := range []*proc{p.cli, p.srv} {
		if a == p.srv {
			p.srv.in.Close()
		}
		waitFor(p.t, a.name+" exit", 3*time.Minute, a.hasExited, a)
		if err := a.exitErr(); err != nil {
			p.t.Errorf("%s agent: %v; stderr:\n%s", a.name, err, a.stderrText())
		}
	}
	return cli.Verified + srv.Verified
}
