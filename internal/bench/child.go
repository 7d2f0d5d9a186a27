package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/control"
	"github.com/rockudp/rockudp/tcprocks"
)

// childJob is what a child process is asked to do (its argument, as JSON).
type childJob struct {
	Job    string           `json:"job"` // "rock-client", "scale-server" or "scale-client"
	Addr   string           `json:"addr,omitempty"`
	Policy callbacks.Policy `json:"policy,omitzero"`
	// Profile asks for a detailed heap profile (every 4 KiB allocated is sampled).
	Profile bool `json:"profile,omitempty"`
}

// childLine is one line a child prints on its standard output.
type childLine struct {
	Ev     string      `json:"ev"` // "ready", "suspended", "resumed", "closed", "stats", "dialed", "error"
	T      int64       `json:"t,omitempty"`
	Addr   string      `json:"addr,omitempty"`
	N      int         `json:"n,omitempty"`
	Err    string      `json:"err,omitempty"`
	Failed int         `json:"failed,omitempty"`
	Stats  *childStats `json:"stats,omitempty"`
}

// childStats is a child's resource use.
type childStats struct {
	RSS        int64 `json:"rss"`  // resident set, bytes
	Heap       int64 `json:"heap"` // live heap objects, bytes
	Stack      int64 `json:"stack"`
	Goroutines int   `json:"goroutines"`
	CPU        int64 `json:"cpu_ns"` // user + system CPU time so far
	Rocks      int   `json:"rocks"`
	Suspended  int   `json:"suspended"` // rocks suspended now
}

// RunChild is the child side of a run (see Config.Child): it does the job described by arg,
// reading commands from in and writing JSON lines to out, until in ends or ctx is done.
func RunChild(ctx context.Context, arg string, in io.Reader, out io.Writer) error {
	var j childJob
	if err := json.Unmarshal([]byte(arg), &j); err != nil {
		return fmt.Errorf("bench: child argument: %w", err)
	}
	if j.Profile {
		runtime.MemProfileRate = 4096 // this process's own setting: RunChild is its main
	}
	w := &lineWriter{enc: json.NewEncoder(out)}
	var err error
	switch j.Job {
	case "rock-client":
		err = childRockClient(ctx, j, in, w)
	case "scale-server", "scale-client":
		err = childScale(ctx, j, in, w)
	default:
		err = fmt.Errorf("unknown job %q", j.Job)
	}
	if err != nil {
		w.put(childLine{Ev: "error", Err: err.Error()})
		return fmt.Errorf("bench: child %s: %w", j.Job, err)
	}
	return nil
}

type lineWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (w *lineWriter) put(l childLine) {
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = w.enc.Encode(l)
}

// childRockClient dials a rock and reports its events until in ends.
func childRockClient(ctx context.Context, j childJob, in io.Reader, w *lineWriter) error {
	closed := make(chan struct{})
	h := callbacks.HandlerFunc(func(e callbacks.Event) {
		l := childLine{Ev: e.Kind.String(), T: e.Time.UnixNano()}
		if e.Cause != nil {
			l.Err = e.Cause.Error()
		}
		w.put(l)
		if e.Kind == callbacks.Closed {
			close(closed)
		}
	})
	c, err := tcprocks.Dial(ctx, "tcp", j.Addr, &tcprocks.Config{Policy: j.Policy, Handler: h, RequireEnhanced: true})
	if err != nil {
		return err
	}
	w.put(childLine{Ev: "ready", T: time.Now().UnixNano()})
	_, _ = io.Copy(io.Discard, in)
	// Close gracefully and wait until the peer knows, so that its rock closes too.
	c.Close()
	select {
	case <-closed:
	case <-ctx.Done():
	case <-time.After(30 * time.Second):
	}
	return nil
}

// childScale is one side of the scale measurement: a listener that accepts rocks, or a
// client that dials them on command. Commands (one per line): "dial N", "mem", "cpu".
func childScale(ctx context.Context, j childJob, in io.Reader, w *lineWriter) error {
	var (
		mu    sync.Mutex
		rocks []*tcprocks.Conn
	)
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range rocks {
			c.Close()
		}
	}()
	var cc *control.Client
	if j.Job == "scale-server" {
		l, err := tcprocks.Listen("tcp", "127.0.0.1:0", &tcprocks.Config{EDP: serverEDP()})
		if err != nil {
			return err
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.AcceptConn()
				if err != nil {
					return
				}
				mu.Lock()
				rocks = append(rocks, c)
				mu.Unlock()
			}
		}()
		w.put(childLine{Ev: "ready", Addr: l.Addr().String()})
	} else {
		var err error
		if cc, err = control.NewClient(nil); err != nil {
			return err
		}
		defer cc.Close()
		w.put(childLine{Ev: "ready"})
	}
	cache := edp.NewCache(time.Hour)
	var prof *os.File
	defer func() {
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
		}
	}()
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		switch cmd {
		case "dial":
			// "dial N SECONDS": dial N rocks, stopping early after SECONDS.
			ns, secs, _ := strings.Cut(arg, " ")
			n, _ := strconv.Atoi(ns)
			budget, _ := strconv.ParseFloat(secs, 64)
			dctx, cancel := context.WithTimeout(ctx, time.Duration(budget*float64(time.Second)))
			cfg := &tcprocks.Config{ControlClient: cc, ProbeCache: cache, RequireEnhanced: true}
			got, failed, firstErr := dialMany(dctx, j.Addr, cfg, n, func(k int) { w.put(childLine{Ev: "dialed", N: k}) })
			cancel()
			mu.Lock()
			rocks = append(rocks, got...)
			mu.Unlock()
			l := childLine{Ev: "dial-done", N: len(got), Failed: failed}
			if firstErr != nil {
				l.Err = firstErr.Error()
			}
			w.put(l)
		case "mem", "cpu":
			mu.Lock()
			n, susp := len(rocks), 0
			for _, c := range rocks {
				if c.State() == tcprocks.Suspended {
					susp++
				}
			}
			mu.Unlock()
			s := resources(cmd == "mem")
			s.Rocks, s.Suspended = n, susp
			w.put(childLine{Ev: "stats", Stats: &s})
		case "heap":
			// "heap PATH" writes a heap profile (after a GC).
			if f, err := os.Create(arg); err == nil {
				runtime.GC()
				_ = pprof.WriteHeapProfile(f)
				f.Close()
			}
			w.put(childLine{Ev: "profile"})
		case "profile":
			// "profile PATH" starts a CPU profile, "profile" alone stops it.
			if arg == "" {
				pprof.StopCPUProfile()
				if prof != nil {
					prof.Close()
				}
				prof = nil
			} else if f, err := os.Create(arg); err == nil {
				if pprof.StartCPUProfile(f) == nil {
					prof = f
				} else {
					f.Close()
				}
			}
			w.put(childLine{Ev: "profile"})
		}
	}
	return sc.Err()
}

// dialMany dials n rocks, 4 at a time, until ctx ends, reporting progress every 500. It
// returns the rocks, the number of dials that failed and the first failure.
func dialMany(ctx context.Context, addr string, cfg *tcprocks.Config, n int, prog func(int)) ([]*tcprocks.Conn, int, error) {
	var (
		mu       sync.Mutex
		rocks    []*tcprocks.Conn
		failed   int
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for range next {
				// A busy listener refuses ("try again later"): retry, as a client would.
				var c *tcprocks.Conn
				var err error
				for attempt := range 5 {
					if c, err = tcprocks.Dial(ctx, "tcp", addr, cfg); err == nil || ctx.Err() != nil {
						break
					}
					time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
				}
				mu.Lock()
				if err != nil {
					if ctx.Err() == nil {
						failed++
						if firstErr == nil {
							firstErr = err
						}
					}
				} else {
					rocks = append(rocks, c)
					if len(rocks)%500 == 0 {
						prog(len(rocks))
					}
				}
				mu.Unlock()
			}
		})
	}
feed:
	for range n {
		select {
		case next <- struct{}{}:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return rocks, failed, firstErr
}

// resources measures this process; withGC first collects garbage and returns free memory to
// the kernel, so that RSS and heap show what is live.
func resources(withGC bool) childStats {
	if withGC {
		runtime.GC()
		debug.FreeOSMemory()
	}
	s := childStats{Goroutines: runtime.NumGoroutine(), CPU: int64(cpuTime())}
	ms := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"}}
	metrics.Read(ms)
	s.Heap, s.Stack = int64(ms[0].Value.Uint64()), int64(ms[1].Value.Uint64())
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				s.RSS = kb << 10
			}
		}
	}
	return s
}

// child is a running child process, seen from the parent.
type child struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan childLine
	done  chan struct{}
	err   error // after done
	errb  *strings.Builder
}

// startChild starts cmd (made by Config.Child, maybe wrapped into a namespace) for job.
func startChild(cmd *exec.Cmd) (*child, error) {
	ch := &child{cmd: cmd, lines: make(chan childLine, 1024), done: make(chan struct{}), errb: &strings.Builder{}}
	cmd.Stderr = &limitedWriter{w: ch.errb, n: 64 << 10}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if ch.in, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(ch.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var l childLine
			if json.Unmarshal(sc.Bytes(), &l) != nil || l.Ev == "" {
				continue // not ours (a test binary's chatter)
			}
			select {
			case ch.lines <- l:
			default: // nobody listens: drop
			}
		}
		ch.err = cmd.Wait()
	}()
	return ch, nil
}

// next waits for the child's next line of one of the kinds evs (others are skipped).
func (c *child) next(timeout time.Duration, evs ...string) (childLine, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l := <-c.lines:
			if l.Ev == "error" {
				return l, errors.New("child: " + l.Err)
			}
			for _, ev := range evs {
				if l.Ev == ev {
					return l, nil
				}
			}
		case <-c.done:
			return childLine{}, fmt.Errorf("child exited (%v) while waiting for %s; stderr: %s", c.err, strings.Join(evs, "/"), c.errb.String())
		case <-t.C:
			return childLine{}, fmt.Errorf("no %s from the child within %v", strings.Join(evs, "/"), timeout)
		}
	}
}

func (c *child) send(cmd string) error {
	_, err := io.WriteString(c.in, cmd+"\n")
	return err
}

// stop closes the child's input and waits for it to exit, killing it after 10 s.
func (c *child) stop() {
	c.in.Close()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

type limitedWriter struct {
	mu sync.Mutex
	w  io.Writer
	n  int
}

func (l *limitedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n > 0 {
		k := min(len(b), l.n)
		l.n -= k
		_, _ = l.w.Write(b[:k])
	}
	return len(b), nil
}
