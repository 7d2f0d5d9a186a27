package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"time"
)

// ScaleResult is what idle rocks cost at one count, per rock beyond the baseline of a process
// with a listener (server side) or a control client (client side) and no rocks. Both sides
// run in processes of their own on loopback.
type ScaleResult struct {
	// Rocks is the number of rocks asked for; Reached the number dialed within the time
	// budget (60 s in a full run), which the per-rock figures are divided by.
	Rocks   int `json:"rocks"`
	Reached int `json:"reached"`
	// DialFailures counts dials that failed even after retries; DialError is the first.
	DialFailures int       `json:"dial_failures"`
	DialError    string    `json:"dial_error,omitempty"`
	Server       SideCosts `json:"server"`
	Client       SideCosts `json:"client"`
	// SetupTime is how long dialing all the rocks took, seconds.
	SetupTime Num `json:"setup_time"`
	// Suspended is the number of rock ends (both sides) suspended at the end of the idle
	// window: rocks whose heartbeats could not keep up.
	Suspended int `json:"suspended"`
}

// SideCosts is one side's cost per idle rock.
type SideCosts struct {
	RSS        Num `json:"rss"`        // resident memory, bytes per rock
	Heap       Num `json:"heap"`       // live heap, bytes per rock
	Stack      Num `json:"stack"`      // goroutine stacks, bytes per rock
	Goroutines Num `json:"goroutines"` // per rock
	// CPU is the CPU time spent per rock per second while idle (heartbeats), seconds/second.
	CPU Num `json:"cpu"`
	// CPUTotal is the whole process's CPU use while idle, as a fraction of one core.
	CPUTotal Num `json:"cpu_total"`
	// BaseRSS is the process's resident memory before any rock, bytes.
	BaseRSS Num `json:"base_rss"`
}

func (r *runner) scale(ctx context.Context) error {
	if r.cfg.Child == nil {
		r.note("Scale did not run: no way to start a child process (Config.Child).")
		return nil
	}
	counts := pick(r, []int{100}, []int{100, 1000, 10000})
	if len(r.cfg.ScaleCounts) > 0 {
		counts = r.cfg.ScaleCounts
	}
	for i, n := range counts {
		res, err := r.scaleOne(ctx, n, func(what string) {
			r.progress(i+1, len(counts), "%d idle rocks: %s", n, what)
		})
		if err != nil {
			return fmt.Errorf("%d rocks: %w", n, err)
		}
		r.rep.Scale = append(r.rep.Scale, res)
	}
	return nil
}

func (r *runner) scaleOne(ctx context.Context, n int, prog func(string)) (ScaleResult, error) {
	res := ScaleResult{Rocks: n}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	prog("starting")
	srv, err := startChild(r.childCmd(cctx, childJob{Job: "scale-server", Profile: r.cfg.ProfileDir != ""}))
	if err != nil {
		return res, err
	}
	defer srv.stop()
	ready, err := srv.next(30*time.Second, "ready")
	if err != nil {
		return res, err
	}
	cli, err := startChild(r.childCmd(cctx, childJob{Job: "scale-client", Addr: ready.Addr, Profile: r.cfg.ProfileDir != ""}))
	if err != nil {
		return res, err
	}
	defer cli.stop()
	if _, err := cli.next(30*time.Second, "ready"); err != nil {
		return res, err
	}
	both := []*child{srv, cli}
	stats := func(cmd string) ([2]childStats, error) {
		var s [2]childStats
		for i, c := range both {
			if err := c.send(cmd); err != nil {
				return s, err
			}
			l, err := c.next(60*time.Second, "stats")
			if err != nil {
				return s, err
			}
			s[i] = *l.Stats
		}
		return s, nil
	}
	base, err := stats("mem")
	if err != nil {
		return res, err
	}
	prog("dialing")
	budget := pick(r, 20*time.Second, 60*time.Second)
	t0 := time.Now()
	if err := cli.send(fmt.Sprintf("dial %d %g", n, budget.Seconds())); err != nil {
		return res, err
	}
	var done childLine
	for {
		l, err := cli.next(budget+2*time.Minute, "dialed", "dial-done")
		if err != nil {
			return res, err
		}
		if l.Ev == "dial-done" {
			done = l
			break
		}
		prog(fmt.Sprintf("dialed %d", l.N))
	}
	res.SetupTime = Num(time.Since(t0).Seconds())
	res.Reached, res.DialFailures, res.DialError = done.N, done.Failed, done.Err
	if done.N == 0 {
		return res, fmt.Errorf("no rock dialed: %s", done.Err)
	}
	n = done.N
	// Wait until every rock is accepted and the control channels are up: goroutine counts
	// stop changing.
	prog("waiting for the control channels")
	var last [2]childStats
	stable := 0
	deadline := time.Now().Add(pick(r, 20*time.Second, 30*time.Second))
	for stable < 3 && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		s, err := stats("cpu")
		if err != nil {
			return res, err
		}
		if s[0].Rocks >= n-done.Failed && s[0].Goroutines == last[0].Goroutines && s[1].Goroutines == last[1].Goroutines {
			stable++
		} else {
			stable = 0
		}
		last = s
	}
	prog("measuring")
	mem, err := stats("mem")
	if err != nil {
		return res, err
	}
	window := pick(r, 2*time.Second, 5*time.Second)
	c0, err := stats("cpu")
	if err != nil {
		return res, err
	}
	if dir := r.cfg.ProfileDir; dir != "" {
		for i, side := range []string{"listener", "dialer"} {
			for _, kind := range []string{"heap", "profile"} {
				_ = both[i].send(fmt.Sprintf("%s %s", kind, filepath.Join(dir, fmt.Sprintf("scale-%d-%s.%s.pprof", n, side, kind))))
				if _, err := both[i].next(30*time.Second, "profile"); err != nil {
					return res, err
				}
			}
		}
	}
	t1 := time.Now()
	time.Sleep(window)
	c1, err := stats("cpu")
	if err != nil {
		return res, err
	}
	el := time.Since(t1).Seconds()
	if r.cfg.ProfileDir != "" {
		for _, c := range both {
			_ = c.send("profile")
			if _, err := c.next(10*time.Second, "profile"); err != nil {
				return res, err
			}
		}
	}
	res.Suspended = c1[0].Suspended + c1[1].Suspended
	for i, side := range []*SideCosts{&res.Server, &res.Client} {
		k := float64(mem[i].Rocks)
		if k == 0 {
			k = float64(n)
		}
		side.RSS = Num(float64(mem[i].RSS-base[i].RSS) / k)
		side.Heap = Num(float64(mem[i].Heap-base[i].Heap) / k)
		side.Stack = Num(float64(mem[i].Stack-base[i].Stack) / k)
		side.Goroutines = Num(float64(mem[i].Goroutines-base[i].Goroutines) / k)
		cpu := time.Duration(c1[i].CPU - c0[i].CPU).Seconds()
		side.CPUTotal = Num(cpu / el)
		side.CPU = Num(cpu / el / k)
		side.BaseRSS = Num(base[i].RSS)
	}
	return res, nil
}
