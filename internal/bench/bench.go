// Package bench measures what rocks cost, side by side with what they replace, the way
// section 9 of "Reliable Network Connections" (Zandy and Miller) measured it: throughput and
// round-trip latency by block size (Figure 6), connection set-up (Table 1), failure detection
// and reconnection (section 9.3), plus the memory and CPU of idle rocks and the UDP tunnel's
// speed against udptunnel. It is the library behind `rockudp bench`.
//
// Every comparison runs its contenders in one run, alternating them (A B, then B A) so that
// drift of a shared machine hits all of them, repeats each measurement several times and
// reports medians (and 95th percentiles where the spread matters) with the ratio against the
// row's baseline. Run returns a Report; WriteMarkdown, WritePlots and JSON render it.
//
// Parts that need root run in network namespaces built with package test/netlab (links shaped
// like the paper's three by rate, delay and loss). Parts that need a process of their own
// (the lab's mobile client, the scale measurements) start children through Config.Child; the
// child side is RunChild.
package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/tcprocks"
)

// Sections of a run, in the order they run.
const (
	SectionBlocks  = "blocks"  // throughput and latency vs block size (Figure 6)
	SectionSetup   = "setup"   // connection set-up (Table 1)
	SectionFailure = "failure" // failure detection and reconnection (section 9.3), root only
	SectionScale   = "scale"   // memory, goroutines and heartbeat CPU of idle rocks
	SectionTunnel  = "tunnel"  // UDP tunnel against direct UDP and udptunnel
)

// AllSections returns every section's name, in run order.
func AllSections() []string {
	return []string{SectionBlocks, SectionSetup, SectionFailure, SectionScale, SectionTunnel}
}

// Config configures Run. A nil or zero Config runs the full set of measurements that this
// machine allows (lab parts only as root; parts that need a child process only with Child).
type Config struct {
	// Quick runs a reduced set (fewer sizes, repetitions and rocks, shorter runs) meant to
	// finish in well under a minute, to check that the benchmark works, not to judge numbers.
	// Default false: the full set (under 15 minutes).
	Quick bool
	// Sections selects what to measure (see AllSections). Default: all.
	Sections []string
	// NoLab skips the parts that need root and network namespaces even when running as root.
	// Default false: they run as root and are skipped (with a note in the report) otherwise.
	NoLab bool
	// Child says how to start a child process of this program that calls RunChild with arg:
	// the path, arguments and extra environment. Default nil: the parts that need a child
	// (failure detection, scale) are skipped with a note in the report.
	Child func(arg string) (path string, args, env []string)
	// Progress receives what is being measured and how far the run is; nil = nothing.
	Progress func(Progress)
	// Logger receives debug messages; nil = silent.
	Logger *slog.Logger
	// Command is the command line recorded in the report. Default: os.Args joined by spaces.
	Command string
	// ScaleCounts are the numbers of idle rocks the scale section measures. Default 100, 1,000
	// and 10,000 (quick: 100).
	ScaleCounts []int
	// ProfileDir, if set, receives pprof profiles of the scale children: their heap before
	// and their CPU during the idle window (scale-N-SIDE.heap.pprof, scale-N-SIDE.profile.pprof,
	// SIDE = listener or dialer). Default: none.
	ProfileDir string
}

// Progress says what a run is measuring now.
type Progress struct {
	Section    string // one of AllSections
	SectionNum int    // 1-based index among the sections that run
	Sections   int    // number of sections that run
	Step       int    // 1-based step within the section
	Steps      int    // steps of the section (an estimate for some sections)
	What       string // the measurement, e.g. "loopback rock 16 KiB throughput, rep 2/5"
	Elapsed    time.Duration
}

// String formats p as one progress line.
func (p Progress) String() string {
	return fmt.Sprintf("[%d/%d %s %d/%d] %s (%s)", p.SectionNum, p.Sections, p.Section, p.Step, p.Steps, p.What, p.Elapsed.Round(time.Second))
}

// Report is the result of a run.
type Report struct {
	Machine  Machine       `json:"machine"`
	Command  string        `json:"command"` // the command line that made the report
	Quick    bool          `json:"quick"`   // a reduced run (Config.Quick)
	Started  time.Time     `json:"started"` // UTC
	Duration time.Duration `json:"duration_ns"`
	// Links holds throughput and latency by block size, one entry per link (loopback first).
	Links   []LinkResult    `json:"links,omitempty"`
	Setup   *SetupResult    `json:"setup,omitempty"`
	Failure []FailureResult `json:"failure,omitempty"`
	Scale   []ScaleResult   `json:"scale,omitempty"`
	Tunnel  *TunnelResult   `json:"tunnel,omitempty"`
	// Notes: what was skipped and why, and other remarks on this run.
	Notes []string `json:"notes,omitempty"`
}

// Machine describes where a run happened.
type Machine struct {
	CPU        string `json:"cpu"` // model name from /proc/cpuinfo
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	Kernel     string `json:"kernel"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`   // GOOS/GOARCH
	Root       bool   `json:"root"` // the run had root (the lab parts could run)
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version(),
		OS: runtime.GOOS + "/" + runtime.GOARCH, Root: os.Geteuid() == 0}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// runner carries one run's state.
type runner struct {
	cfg     Config
	log     *slog.Logger
	rep     *Report
	start   time.Time
	section string
	secNum  int
	secs    int
	lab     bool // root parts run
	// policy is the rocks' policy outside the failure section: the default in a full run;
	// quick runs use fast heartbeats so that closing rocks linger for less than a second.
	policy callbacks.Policy
	watch  *closeWatch // every rock made in this process
}

// rockConfig returns a rock configuration with the run's policy and close watch.
func (r *runner) rockConfig(cfg tcprocks.Config) *tcprocks.Config {
	cfg.Policy, cfg.Handler = r.policy, r.watch
	cfg.Logger = r.log
	return &cfg
}

// Run measures the selected sections and returns the report. A section that fails is
// recorded in Report.Notes and the run goes on; Run returns an error (with the report so far)
// when a section failed or ctx ended.
func Run(ctx context.Context, cfg *Config) (*Report, error) {
	r := &runner{start: time.Now(), watch: newCloseWatch()}
	if cfg != nil {
		r.cfg = *cfg
	}
	if len(r.cfg.Sections) == 0 {
		r.cfg.Sections = AllSections()
	}
	for _, s := range r.cfg.Sections {
		if !slices.Contains(AllSections(), s) {
			return nil, fmt.Errorf("bench: unknown section %q: want one of %s", s, strings.Join(AllSections(), ", "))
		}
	}
	r.log = r.cfg.Logger
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.cfg.Command == "" {
		r.cfg.Command = strings.Join(os.Args, " ")
	}
	r.rep = &Report{Machine: machine(), Command: r.cfg.Command, Quick: r.cfg.Quick, Started: r.start.UTC()}
	r.lab = os.Geteuid() == 0 && !r.cfg.NoLab
	if r.cfg.Quick {
		r.policy = callbacks.Policy{HeartbeatInterval: 100 * time.Millisecond}
	}
	if !r.lab {
		why := "not running as root"
		if r.cfg.NoLab {
			why = "--no-lab was given"
		}
		r.note("The network-lab parts (shaped links, failure detection) did not run: " + why + ".")
	}
	if r.lab && (slices.Contains(r.cfg.Sections, SectionBlocks) || slices.Contains(r.cfg.Sections, SectionFailure)) {
		how := "tc netem is not available on this kernel, so the lab's delay comes from netlab's Go TUN delay line"
		if netemLoaded() {
			how = "the lab's delay comes from tc netem"
		}
		r.note(how + "; loss comes from nftables rules and rate limits from tbf (see test/netlab).")
	}
	steps := map[string]func(context.Context) error{
		SectionBlocks: r.blocks, SectionSetup: r.setup, SectionFailure: r.failure,
		SectionScale: r.scale, SectionTunnel: r.tunnel,
	}
	var errs []error
	for _, s := range AllSections() {
		if slices.Contains(r.cfg.Sections, s) {
			r.secs++
		}
	}
	for _, s := range AllSections() {
		if !slices.Contains(r.cfg.Sections, s) {
			continue
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		r.section = s
		r.secNum++
		if err := steps[s](ctx); err != nil {
			r.note(fmt.Sprintf("Section %s failed: %v", s, err))
			errs = append(errs, fmt.Errorf("bench: %s: %w", s, err))
		}
	}
	r.waitRocks()
	r.rep.Duration = time.Since(r.start)
	return r.rep, errors.Join(errs...)
}

// netemLoaded reports whether the kernel has the netem qdisc loaded (netlab uses it then).
func netemLoaded() bool {
	_, err := os.Stat("/sys/module/sch_netem")
	return err == nil
}

func (r *runner) note(s string) { r.rep.Notes = append(r.rep.Notes, s) }

// waitRocks waits until every rock made so far has finished closing (30 s at most).
func (r *runner) waitRocks() {
	if r.watch.wait(30 * time.Second) {
		return
	}
	r.watch.mu.Lock()
	made, closed := r.watch.made, r.watch.closed
	r.watch.mu.Unlock()
	r.note(fmt.Sprintf("%d of %d rocks had not finished closing after 30 s (section %s).", made-closed, made, r.section))
}

// progress reports step of steps of the current section.
func (r *runner) progress(step, steps int, format string, args ...any) {
	what := fmt.Sprintf(format, args...)
	r.log.Debug("bench: "+what, "section", r.section, "step", step, "steps", steps)
	if r.cfg.Progress == nil {
		return
	}
	r.cfg.Progress(Progress{Section: r.section, SectionNum: r.secNum, Sections: r.secs, Step: step, Steps: steps,
		What: what, Elapsed: time.Since(r.start)})
}

// reps returns the number of repetitions: quick or full.
func (r *runner) reps(quick, full int) int {
	if r.cfg.Quick {
		return quick
	}
	return full
}

// pick returns quick or full.
func pick[T any](r *runner, quick, full T) T {
	if r.cfg.Quick {
		return quick
	}
	return full
}

// order returns the indices 0..n-1 in the order of repetition rep: forwards on even
// repetitions, backwards on odd ones (A B, B A, ...), so drift hits every contender alike.
func order(n, rep int) []int {
	idx := make([]int, n)
	for i := range idx {
		if rep%2 == 0 {
			idx[i] = i
		} else {
			idx[i] = n - 1 - i
		}
	}
	return idx
}
