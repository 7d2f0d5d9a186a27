package tcprocks

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
)

// The scale test runs 10,000 idle rocks between two processes: this test process holds the
// listener and the accepted rocks, and a child (the test binary re-executed with
// scaleClientEnv set, running TestScaleClient) dials them all. Two processes, because a
// process holds one descriptor per rock end and this machine caps a process at 20,000.

// scaleClientEnv, set in a child, holds the listener address the child dials.
const scaleClientEnv = "ROCKUDP_SCALE_CLIENT"

// usage is a snapshot of one process's memory, goroutines and CPU time.
type usage struct {
	RSS        uint64        `json:"rss"`    // resident set (VmRSS)
	Heap       uint64        `json:"heap"`   // live heap objects
	Stacks     uint64        `json:"stacks"` // goroutine stacks
	Goroutines int           `json:"goroutines"`
	CPU        time.Duration `json:"cpu"` // user + system since the process started
}

// cpuTime returns the process's user + system CPU time.
func cpuTime(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// idleCPU returns the CPU time the process spends in window, with no garbage collection
// forced in it; ROCKUDP_SCALE_CPUPROFILE names a file for a CPU profile of the window.
func idleCPU(t testing.TB, window time.Duration) time.Duration {
	if path := os.Getenv("ROCKUDP_SCALE_CPUPROFILE"); path != "" {
		f, err := os.Create(fmt.Sprintf("%s.%d", path, os.Getpid()))
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer f.Close()
			defer pprof.StopCPUProfile()
		}
	}
	start := cpuTime(t)
	time.Sleep(window) // a measurement window, not synchronisation
	return cpuTime(t) - start
}

func measure(t testing.TB) usage {
	runtime.GC()
	runtime.GC()
	var u usage
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"}}
	metrics.Read(s)
	u.Heap, u.Stacks = s[0].Value.Uint64(), s[1].Value.Uint64()
	u.Goroutines = runtime.NumGoroutine()
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for l := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				u.RSS = kb << 10
			}
		}
	}
	u.CPU = cpuTime(t)
	return u
}

// scaleReport is one process's figures per idle rock.
type scaleReport struct {
	Base, Idle usage
	Window     time.Duration
	CPU        time.Duration // spent in Window
}

func (r scaleReport) String() string {
	n := float64(scaleRocks())
	kib := func(a, b uint64) float64 { return float64(int64(b)-int64(a)) / n / 1024 }
	cpu := r.CPU
	return fmt.Sprintf("per idle rock end: RSS %.1f KiB, heap %.1f KiB, stacks %.1f KiB, %.2f goroutines; CPU %.2f %% of one core over %v (%.1f µs per rock per second)",
		kib(r.Base.RSS, r.Idle.RSS), kib(r.Base.Heap, r.Idle.Heap), kib(r.Base.Stacks, r.Idle.Stacks),
		float64(r.Idle.Goroutines-r.Base.Goroutines)/n,
		100*cpu.Seconds()/r.Window.Seconds(), r.Window, cpu.Seconds()*1e6/r.Window.Seconds()/n)
}

// scaleRocks is how many rocks TestTenThousandRocks runs: 10,000, or 500 under the race
// detector (which multiplies the memory of every goroutine), or 200 with -short;
// ROCKUDP_SCALE_ROCKS overrides it.
func scaleRocks() int {
	if v, err := strconv.Atoi(os.Getenv("ROCKUDP_SCALE_ROCKS")); err == nil && v > 0 {
		return v
	}
	switch {
	case testing.Short():
		return 200
	case raceEnabled:
		return 500
	}
	return 10000
}

// scaleWindow is the CPU measurement window: ROCKUDP_SCALE_CPU_WINDOW, default 10 s.
func scaleWindow() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("ROCKUDP_SCALE_CPU_WINDOW")); err == nil && d > 0 {
		return d
	}
	return 10 * time.Second
}

// scaleClient is the child process, seen from the test.
type scaleClient struct {
	in    io.WriteCloser
	lines chan string
	cmd   *exec.Cmd
}

// expect waits for the child's next line, which must start with prefix, and returns the rest.
func (c *scaleClient) expect(t testing.TB, prefix string, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			t.Fatalf("scale client exited while we waited for %q", prefix)
		}
		rest, found := strings.CutPrefix(l, prefix)
		if !found {
			t.Fatalf("scale client said %q, want %q", l, prefix)
		}
		return strings.TrimSpace(rest)
	case <-time.After(timeout):
		t.Fatalf("scale client: no %q within %v", prefix, timeout)
	}
	return ""
}

func (c *scaleClient) send(t testing.TB, cmd string) {
	if _, err := io.WriteString(c.in, cmd+"\n"); err != nil {
		t.Fatal(err)
	}
}

// TestTenThousandRocks establishes 10,000 idle rocks (fewer under -race, see scaleRocks)
// between this process's listener and a child process's dialer, measures memory, goroutines
// and CPU per idle rock end in both processes at the default heartbeat interval, forces every
// rock to reconnect at once, and checks that each one carries data both ways afterwards.
func TestTenThousandRocks(t *testing.T) {
	n := scaleRocks()
	window := scaleWindow()
	var resumed atomic.Int64
	srvCfg := &Config{
		Policy: callbacks.Policy{ReconnectTimeout: 10 * time.Minute},
		// All rocks suspend at once in the forced reconnection, and are dialed 32 at a time.
		MaxSuspended:         2 * n,
		MaxPendingHandshakes: 4096,
		Handler: callbacks.HandlerFunc(func(e callbacks.Event) {
			if e.Kind == callbacks.Resumed {
				resumed.Add(1)
			}
		}),
	}
	srvCfg.EDP = &edp.Config{FirstByteWait: 2 * time.Second}
	base := measure(t)
	l := listen(t, srvCfg)

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestScaleClient$", "-test.timeout=60m")
	cmd.Env = append(os.Environ(), scaleClientEnv+"="+l.Addr().String(), fmt.Sprintf("ROCKUDP_SCALE_ROCKS=%d", n))
	cmd.Stderr = os.Stderr
	cl := &scaleClient{cmd: cmd, lines: make(chan string, 16)}
	if cl.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(cl.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), "scale: "); ok {
				cl.lines <- l
			} else {
				fmt.Fprintln(os.Stderr, "scale client:", sc.Text())
			}
		}
	}()
	clientExited := false
	t.Cleanup(func() {
		if !clientExited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})

	start := time.Now()
	servers := make([]*Conn, 0, n)
	for range n {
		s, err := l.AcceptConn()
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, s)
	}
	t.Cleanup(func() {
		for _, s := range servers {
			s.Close()
		}
		waitAllDone(t, servers)
	})
	cl.expect(t, "ready", 10*time.Minute)
	waitForLong(t, "every control channel", 5*time.Minute, func() bool { return allControl(servers) })
	t.Logf("%d rocks established, control channels included, in %v", n, time.Since(start).Round(time.Millisecond))

	// Both processes measure the same idle window.
	cl.send(t, "measure")
	idle := measure(t)
	srvReport := scaleReport{Base: base, Idle: idle, Window: window, CPU: idleCPU(t, window)}
	var cliReport scaleReport
	if err := json.Unmarshal([]byte(cl.expect(t, "measured", window+5*time.Minute)), &cliReport); err != nil {
		t.Fatal(err)
	}
	t.Logf("listener process, %d rocks: %v", n, srvReport)
	t.Logf("client process, %d rocks:   %v", n, cliReport)

	// One forced reconnection of the whole set.
	start = time.Now()
	cl.send(t, "suspend")
	waitForLong(t, fmt.Sprintf("%d resumptions", n), 10*time.Minute, func() bool { return resumed.Load() >= int64(n) })
	cl.expect(t, "resumed", 10*time.Minute)
	t.Logf("%d rocks resumed in %v", n, time.Since(start).Round(time.Millisecond))
	// Every rock carries data both ways: each server sends its rock's ID, the client echoes it.
	cl.send(t, "echo")
	parallel(n, 32, func(i int) {
		s := servers[i]
		id := s.ID()
		msg := []byte(hex.EncodeToString(id[:]))
		s.SetDeadline(time.Now().Add(5 * time.Minute))
		defer s.SetDeadline(time.Time{})
		if _, err := s.Write(msg); err != nil {
			t.Errorf("rock %x: %v", id, err)
			return
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(s, got); err != nil || string(got) != string(msg) {
			t.Errorf("rock %x: echo %q, %v", id, got, err)
		}
	})
	cl.expect(t, "echoed", 5*time.Minute)
	waitForLong(t, "every control channel after the reconnection", 5*time.Minute, func() bool { return allControl(servers) })
	cl.in.Close() // the child closes its rocks and exits
	if err := cmd.Wait(); err != nil {
		t.Errorf("scale client: %v", err)
	}
	clientExited = true
}

func allControl(rocks []*Conn) bool {
	for _, c := range rocks {
		if c.ControlNetwork() == "" {
			return false
		}
	}
	return true
}

// TestScaleClient is the dialing process of TestTenThousandRocks; it does nothing unless
// scaleClientEnv is set. It prints "scale: ..." lines and obeys commands on its input.
func TestScaleClient(t *testing.T) {
	addr := os.Getenv(scaleClientEnv)
	if addr == "" {
		return // only as the child process of TestTenThousandRocks
	}
	n := scaleRocks()
	say := func(f string, a ...any) { fmt.Printf("scale: "+f+"\n", a...) }
	var resumed atomic.Int64
	cfg := &Config{
		Policy: callbacks.Policy{ReconnectTimeout: 10 * time.Minute},
		Handler: callbacks.HandlerFunc(func(e callbacks.Event) {
			if e.Kind == callbacks.Resumed {
				resumed.Add(1)
			}
		}),
		ControlClient: testClient(t),
	}
	base := measure(t)
	clients := make([]*Conn, n)
	parallel(n, 32, func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		c, err := Dial(ctx, "tcp", addr, cfg)
		if err != nil {
			t.Error(err)
			return
		}
		clients[i] = c
	})
	if t.Failed() {
		t.FailNow()
	}
	t.Cleanup(func() {
		parallel(n, 32, func(i int) { clients[i].Close() })
		waitAllDone(t, clients)
	})
	waitForLong(t, "every control channel", 5*time.Minute, func() bool { return allControl(clients) })
	say("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "measure":
			window := scaleWindow()
			idle := measure(t)
			b, _ := json.Marshal(scaleReport{Base: base, Idle: idle, Window: window, CPU: idleCPU(t, window)})
			say("measured %s", b)
		case "suspend":
			parallel(n, 32, func(i int) { clients[i].Suspend() })
			waitForLong(t, "resumptions", 10*time.Minute, func() bool { return resumed.Load() >= int64(n) })
			say("resumed")
		case "echo":
			// Every rock at once: the listener side sends in an order of its own.
			parallel(n, n, func(i int) {
				c := clients[i]
				c.SetDeadline(time.Now().Add(5 * time.Minute))
				defer c.SetDeadline(time.Time{})
				buf := make([]byte, 32)
				if _, err := io.ReadFull(c, buf); err != nil {
					t.Errorf("echo: %v", err)
					return
				}
				if _, err := c.Write(buf); err != nil {
					t.Errorf("echo: %v", err)
				}
			})
			say("echoed")
		}
	}
}

// waitAllDone waits until every rock has finished, for at most two minutes in all.
func waitAllDone(t testing.TB, rocks []*Conn) {
	deadline := time.After(2 * time.Minute)
	for i, c := range rocks {
		if c == nil || c.plain != nil {
			continue
		}
		select {
		case <-c.done:
			c.wg.Wait()
		case <-deadline:
			t.Errorf("%d of %d rocks not finished 2 minutes after Close", len(rocks)-i, len(rocks))
			return
		}
	}
}

// parallel runs f(0..n-1) on workers goroutines.
func parallel(n, workers int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Go(func() {
			for i := range next {
				f(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}
