package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/internal/control"
	"github.com/rockudp/rockudp/internal/relay"
	"github.com/rockudp/rockudp/tcprocks"
	"github.com/spf13/cobra"
)

type demoOpts struct {
	rate      float64 // MiB/s each way
	heartbeat time.Duration
	misses    int
}

func newDemoCmd(g *globalOpts) *cobra.Command {
	o := &demoOpts{}
	c := &cobra.Command{
		Use:   "demo",
		Short: "A self-contained showcase of rocks surviving broken paths, on loopback",
		Long: `demo runs, in this one process on loopback, with no root and nothing installed:

  app client ─tcp─▶ connect ══rock══▶ [fault relay] ══rock══▶ serve ─tcp─▶ service

"connect" and "serve" are the same code as the rockudp connect and serve commands:
each local TCP connection is carried over its own rock. The app client and the
service stream pseudo-random data both ways at a steady rate while the relay breaks
the path: a reset, a blackhole longer than the heartbeat timeout, a cut (FIN with no
close message) and a server that refuses connections for a while. Every received byte
is checked against the sender's stream as it arrives, and SHA-256 digests are compared
at the end. The command exits 0 only if every byte arrived exactly once, in order.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.rate <= 0 {
				return fmt.Errorf("--rate must be positive, got %v", o.rate)
			}
			if o.heartbeat <= 0 || o.misses <= 0 {
				return fmt.Errorf("--heartbeat and --misses must be positive")
			}
			return runDemo(cmd.Context(), cmd.OutOrStdout(), g, o)
		},
	}
	c.Flags().Float64Var(&o.rate, "rate", 8, "MiB/s streamed in each direction")
	c.Flags().DurationVar(&o.heartbeat, "heartbeat", 250*time.Millisecond, "heartbeat interval of the rocks")
	c.Flags().IntVar(&o.misses, "misses", 3, "missed heartbeats before a rock suspends")
	return c
}

// fault is one scripted break of the path.
type fault struct {
	name     string
	at, dur  time.Duration // offset from the start of streaming; how long the path stays broken
	start    func(r *relay.Relay)
	end      func(r *relay.Relay)
	injected time.Time // when start ran
	restored time.Time // when the path worked again (end ran, or injected for instant faults)
}

func demoFaults(hbTimeout time.Duration) []*fault {
	noop := func(*relay.Relay) {}
	bh := 2*hbTimeout + time.Second
	return []*fault{
		{name: "reset (RST)", at: 2 * time.Second, start: (*relay.Relay).Reset, end: noop},
		{name: fmt.Sprintf("blackhole %v", bh), at: 4 * time.Second, dur: bh,
			start: func(r *relay.Relay) { r.Blackhole(true) }, end: func(r *relay.Relay) { r.Blackhole(false) }},
		{name: "cut (FIN, no close)", at: 5*time.Second + bh, start: (*relay.Relay).Cut, end: noop},
		{name: "server unreachable 1.5s", at: 7*time.Second + bh, dur: 1500 * time.Millisecond,
			start: func(r *relay.Relay) { r.Refuse(true); r.Reset() }, end: func(r *relay.Relay) { r.Refuse(false) }},
	}
}

// demoEvent is a rock event with the side it happened on.
type demoEvent struct {
	side string
	callbacks.Event
}

func runDemo(ctx context.Context, out io.Writer, g *globalOpts, o *demoOpts) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hbTimeout := o.heartbeat * time.Duration(o.misses)
	faults := demoFaults(hbTimeout)
	last := faults[len(faults)-1]
	streamFor := last.at + last.dur + 2*time.Second
	rate := int64(o.rate * (1 << 20))

	fmt.Fprintf(out, "rockudp demo: app client ─tcp─▶ connect ══rock══▶ fault relay ══rock══▶ serve ─tcp─▶ service\n")
	fmt.Fprintf(out, "  streaming %.1f MiB/s each way for %v; heartbeat %v × %d (suspend after %v without one)\n\n",
		o.rate, streamFor.Round(time.Second), o.heartbeat, o.misses, hbTimeout)

	events := make(chan demoEvent, 256)
	handler := func(side string) callbacks.Handler {
		return callbacks.HandlerFunc(func(e callbacks.Event) {
			select {
			case events <- demoEvent{side, e}:
			case <-ctx.Done():
			}
		})
	}
	policy := callbacks.Policy{HeartbeatInterval: o.heartbeat, MissedHeartbeats: o.misses,
		ReconnectTimeout: time.Minute}

	// The service: an ordinary TCP server streaming its own data to whoever connects.
	svcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: service: %w", err)
	}
	defer svcLn.Close()

	// serve: rocks in, plain TCP to the service.
	serveLn, err := tcprocks.Listen("tcp", "127.0.0.1:0", &tcprocks.Config{Policy: policy,
		Handler: handler("server"), Logger: g.logger})
	if err != nil {
		return fmt.Errorf("demo: serve: %w", err)
	}
	// The fault relay between the two rock ends (TCP and the QUIC control channel's UDP).
	rl, err := relay.New(serveLn.Addr().String(), &relay.Config{Logger: g.logger})
	if err != nil {
		serveLn.Close()
		return fmt.Errorf("demo: relay: %w", err)
	}
	defer rl.Close()
	// connect: local TCP in, one rock per connection to the server through the relay.
	cc, err := control.NewClient(&control.ClientConfig{Logger: g.logger})
	if err != nil {
		serveLn.Close()
		return fmt.Errorf("demo: control client: %w", err)
	}
	defer cc.Close()
	localLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		serveLn.Close()
		return fmt.Errorf("demo: connect: %w", err)
	}
	var loops sync.WaitGroup
	loops.Add(2)
	go func() {
		defer loops.Done()
		serveRocks(ctx, serveLn, svcLn.Addr().String(), nil, g.logger, nil, nil)
	}()
	go func() {
		defer loops.Done()
		connectRocks(ctx, localLn, rl.Addr().String(), &tcprocks.Config{Policy: policy,
			Handler: handler("client"), ControlClient: cc, Logger: g.logger}, nil, g.logger)
	}()
	defer func() {
		localLn.Close()
		serveLn.Close()
		loops.Wait()
	}()

	// Both applications: each streams its seed's bytes and verifies the other's.
	up := &stream{name: "client → service", seed: 1}
	down := &stream{name: "service → client", seed: 2}
	start := time.Now()
	var apps sync.WaitGroup
	appErrs := make(chan error, 4)
	apps.Add(2)
	go func() { // service side
		defer apps.Done()
		c, err := svcLn.Accept()
		if err != nil {
			appErrs <- fmt.Errorf("service accept: %w", err)
			return
		}
		runApp(ctx, c.(*net.TCPConn), down, up, rate, streamFor, appErrs)
	}()
	go func() { // client side
		defer apps.Done()
		c, err := net.Dial("tcp", localLn.Addr().String())
		if err != nil {
			appErrs <- fmt.Errorf("client dial: %w", err)
			return
		}
		runApp(ctx, c.(*net.TCPConn), up, down, rate, streamFor, appErrs)
	}()
	appsDone := make(chan struct{})
	go func() { apps.Wait(); close(appsDone) }()

	// The fault script.
	var faultsWG sync.WaitGroup
	faultsWG.Add(1)
	var faultMu sync.Mutex
	faultMsgs := make(chan string, 16)
	go func() {
		defer faultsWG.Done()
		for _, f := range faults {
			if !sleepUntil(ctx, start.Add(f.at)) {
				return
			}
			now := time.Now() // before the fault: the first events may beat the next line
			faultMu.Lock()
			f.injected = now
			if f.dur == 0 {
				f.restored = now
			}
			faultMu.Unlock()
			f.start(rl)
			faultMsgs <- fmt.Sprintf("fault: %s", f.name)
			if f.dur > 0 {
				if !sleepUntil(ctx, now.Add(f.dur)) {
					return
				}
				faultMu.Lock()
				f.restored = time.Now()
				faultMu.Unlock()
				f.end(rl)
				faultMsgs <- fmt.Sprintf("path restored after %v", f.dur)
			}
		}
	}()

	// Live display until both applications are done.
	tty := isTerminal(out)
	var log []demoEvent
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	lastLine := time.Now()
	progress := func() string {
		return fmt.Sprintf("  %6.1fs  verified: %s %s   %s %s", time.Since(start).Seconds(),
			up.name, mib(up.verified.Load()), down.name, mib(down.verified.Load()))
	}
	say := func(s string) {
		if tty {
			fmt.Fprintf(out, "\r\033[K")
		}
		fmt.Fprintf(out, "  %6.1fs  %s\n", time.Since(start).Seconds(), s)
	}
	var firstErr error
loop:
	for {
		select {
		case <-appsDone:
			break loop
		case <-ctx.Done():
			firstErr = ctx.Err()
			break loop
		case err := <-appErrs:
			if firstErr == nil {
				firstErr = err
			}
			cancel()
		case m := <-faultMsgs:
			if tty {
				m = "\033[1m" + m + "\033[0m"
			}
			say(m)
		case e := <-events:
			log = append(log, e)
			say(describeEvent(e))
		case <-tick.C:
			if tty {
				fmt.Fprintf(out, "\r\033[K%s", progress())
			} else if time.Since(lastLine) >= 2*time.Second {
				fmt.Fprintln(out, progress())
				lastLine = time.Now()
			}
		}
	}
	faultsWG.Wait()
	if tty {
		fmt.Fprintf(out, "\r\033[K")
	}
	fmt.Fprintln(out, progress())
	select {
	case err := <-appErrs:
		if firstErr == nil {
			firstErr = err
		}
	default:
	}
	if firstErr != nil {
		return fmt.Errorf("demo failed: %w", firstErr)
	}
	// A rock's Close returns at once and finishes the graceful close in the background;
	// wait for both rocks to report Closed before tearing the process down, as any
	// program that exits after closing its rocks should.
	closed := map[string]bool{}
	for _, e := range log {
		if e.Kind == callbacks.Closed {
			closed[e.side] = true
		}
	}
	closeWait := time.NewTimer(30 * time.Second)
	defer closeWait.Stop()
	for !closed["client"] || !closed["server"] {
		select {
		case e := <-events:
			log = append(log, e)
			if e.Kind == callbacks.Closed {
				closed[e.side] = true
			}
		case <-closeWait.C:
			return errors.New("demo failed: the rocks did not finish closing within 30s")
		case <-ctx.Done():
			return fmt.Errorf("demo failed: %w", ctx.Err())
		}
	}

	faultMu.Lock()
	defer faultMu.Unlock()
	ok := printDemoSummary(out, up, down, faults, log)
	if !ok {
		return errors.New("demo failed: the streams do not match")
	}
	fmt.Fprintln(out, "\nEvery byte arrived exactly once, in order, through every failure.")
	return nil
}

// stream is one direction's pseudo-random byte stream: the sender writes it, the
// receiver regenerates it and compares as bytes arrive.
type stream struct {
	name                       string
	seed                       uint64
	sent, verified             atomic.Int64
	sentSum, recvSum           [32]byte
	mismatchAt                 int64 // -1: none
	senderDone, receiverClosed bool
}

func (s *stream) gen() io.Reader { return rand.NewChaCha8([32]byte{byte(s.seed)}) }

// runApp writes out's stream to c at rate for d, half-closes, and reads in's stream
// until EOF, verifying every byte.
func runApp(ctx context.Context, c *net.TCPConn, out, in *stream, rate int64, d time.Duration, errs chan<- error) {
	defer c.Close()
	defer context.AfterFunc(ctx, func() { c.Close() })()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h := sha256.New()
		gen := out.gen()
		buf := make([]byte, 32<<10)
		start := time.Now()
		for time.Since(start) < d && ctx.Err() == nil {
			if ahead := out.sent.Load() - int64(time.Since(start).Seconds()*float64(rate)); ahead > 0 {
				time.Sleep(time.Duration(float64(ahead) / float64(rate) * float64(time.Second)))
				continue
			}
			io.ReadFull(gen, buf)
			if _, err := c.Write(buf); err != nil {
				errs <- fmt.Errorf("%s: write: %w", out.name, err)
				return
			}
			h.Write(buf)
			out.sent.Add(int64(len(buf)))
		}
		copy(out.sentSum[:], h.Sum(nil))
		out.senderDone = true
		c.CloseWrite()
	}()
	h := sha256.New()
	gen := in.gen()
	in.mismatchAt = -1
	buf := make([]byte, 64<<10)
	want := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			io.ReadFull(gen, want[:n])
			if in.mismatchAt < 0 && !bytes.Equal(buf[:n], want[:n]) {
				in.mismatchAt = in.verified.Load()
				errs <- fmt.Errorf("%s: byte %d differs from what was sent", in.name, in.mismatchAt)
			}
			h.Write(buf[:n])
			in.verified.Add(int64(n))
		}
		if err == io.EOF {
			in.receiverClosed = true
			break
		}
		if err != nil {
			errs <- fmt.Errorf("%s: read: %w", in.name, err)
			break
		}
	}
	copy(in.recvSum[:], h.Sum(nil))
	wg.Wait()
}

func describeEvent(e demoEvent) string {
	switch e.Kind {
	case callbacks.Suspended:
		return fmt.Sprintf("%-6s rock suspended (%v)", e.side, e.Cause)
	case callbacks.Reconnecting:
		if e.Attempt == 1 || e.Attempt%5 == 0 {
			return fmt.Sprintf("%-6s reconnecting, attempt %d to %s", e.side, e.Attempt, e.Target)
		}
		return fmt.Sprintf("%-6s reconnecting, attempt %d", e.side, e.Attempt)
	case callbacks.Resumed:
		return fmt.Sprintf("%-6s rock resumed after %v, %s replayed", e.side,
			e.Downtime.Round(time.Millisecond), mib(e.Replayed))
	case callbacks.Closed:
		if e.Cause == nil {
			return fmt.Sprintf("%-6s rock closed", e.side)
		}
		return fmt.Sprintf("%-6s rock closed: %v", e.side, e.Cause)
	case callbacks.TimedOut:
		return fmt.Sprintf("%-6s rock timed out after %v", e.side, e.Downtime)
	}
	return fmt.Sprintf("%-6s %v", e.side, e.Kind)
}

// printDemoSummary prints the stream and fault tables and reports whether both streams
// arrived intact.
func printDemoSummary(out io.Writer, up, down *stream, faults []*fault, log []demoEvent) bool {
	ok := true
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  stream\tsent\treceived\tSHA-256 sent\tSHA-256 received\tresult")
	for _, s := range []*stream{up, down} {
		res := "exact"
		if s.sent.Load() != s.verified.Load() || s.sentSum != s.recvSum || s.mismatchAt >= 0 {
			res, ok = "MISMATCH", false
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%x…\t%x…\t%s\n", s.name, mib(s.sent.Load()), mib(s.verified.Load()),
			s.sentSum[:6], s.recvSum[:6], res)
	}
	tw.Flush()

	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  fault\tdetected after\trecovered after\treplayed (client+server)")
	survived := 0
	for i, f := range faults {
		var next time.Time
		if i+1 < len(faults) {
			next = faults[i+1].injected
		}
		det, rec, replayed := "-", "-", int64(0)
		var suspended, resumed bool
		for _, e := range log {
			if e.Time.Before(f.injected) || (!next.IsZero() && !e.Time.Before(next)) {
				continue
			}
			switch e.Kind {
			case callbacks.Suspended:
				if !suspended {
					det = fmtDur(e.Time.Sub(f.injected))
					suspended = true
				}
			case callbacks.Resumed:
				replayed += e.Replayed
				if e.side == "client" && !resumed && !f.restored.IsZero() {
					d := e.Time.Sub(f.restored)
					if d < 0 {
						d = 0
					}
					rec = fmtDur(d)
					resumed = true
				}
			}
		}
		if resumed {
			survived++
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", f.name, det, rec, mib(replayed))
	}
	tw.Flush()
	fmt.Fprintf(out, "\n  failures survived: %d of %d\n", survived, len(faults))
	fmt.Fprintln(out, "  (detected: fault → first Suspended event; recovered: path restored → client's Resumed event)")
	return ok
}

// fmtDur shows a measured duration with a precision that suits its size.
func fmtDur(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// sleepUntil waits until t or until ctx ends; it reports whether t was reached.
func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// isTerminal reports whether w is a character device (a terminal), where the progress
// line is redrawn in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0 && !strings.Contains(os.Getenv("TERM"), "dumb")
}
