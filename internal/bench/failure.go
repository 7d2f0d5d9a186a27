package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/tcprocks"
)

// FailureResult is failure detection and reconnection in the lab under one policy: the
// client's link goes down while the rock is idle, stays down for a while after the rock
// suspended, and comes back.
type FailureResult struct {
	Policy string `json:"policy"` // "default" or "tuned"
	// Failure is how the link fails: "link down" (ip link set down/up: the client's kernel
	// knows) or "silent" (all traffic dropped on the router: nobody is told).
	Failure string `json:"failure"`
	// Cause is the Suspended event's cause in most runs.
	Cause string `json:"cause"`
	// Timeout is the policy's heartbeat timeout (interval × missed heartbeats).
	Timeout time.Duration `json:"timeout_ns"`
	// BackoffMax is the policy's largest pause between reconnection attempts (at most 1 s
	// during a suspension's first minute).
	BackoffMax time.Duration `json:"backoff_max_ns"`
	// Detection: from the failure (the start of the command that makes it) to the client's
	// Suspended event, seconds.
	Detection Summary `json:"detection"`
	// DetectionRatio is the median detection over Timeout.
	DetectionRatio Num `json:"detection_ratio"`
	// Reconnect: from the link coming back (the start of the command) to the client's
	// Resumed event, seconds.
	Reconnect Summary `json:"reconnect"`
	// Outage is the median time the link stayed down, seconds.
	Outage Num `json:"outage"`
	// Command is the median time the commands that fail and heal the link took, seconds.
	// Times are measured from the start of those commands, so they are upper bounds that
	// include up to this much of the commands' own run time.
	Command Num `json:"command"`
}

var failurePolicies = []struct {
	name string
	p    callbacks.Policy
}{
	{"default", callbacks.Policy{}},
	{"tuned", callbacks.Policy{HeartbeatInterval: 200 * time.Millisecond, MissedHeartbeats: 3,
		BackoffInitial: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond}},
}

func (r *runner) failure(ctx context.Context) error {
	if !r.lab {
		return nil
	}
	if r.cfg.Child == nil {
		r.note("Failure detection did not run: no way to start a child process (Config.Child).")
		return nil
	}
	reps := r.reps(2, 20)
	policies := failurePolicies
	if r.cfg.Quick {
		policies = policies[1:]
	}
	return withLab(r.log, func(lab *labNet) error {
		modes := []string{"link down", "silent"}
		step, steps := 0, reps*len(policies)*len(modes)
		for i, pol := range policies {
			for _, mode := range modes {
				res, err := r.failureRun(ctx, lab, 7000+i, pol.name, pol.p, mode, reps, func(rep int) {
					step++
					r.progress(step, steps, "%s policy, %s: rep %d/%d", pol.name, mode, rep, reps)
				})
				if err != nil {
					return fmt.Errorf("%s policy, %s: %w", pol.name, mode, err)
				}
				r.rep.Failure = append(r.rep.Failure, res)
			}
		}
		// Let the server's rocks finish closing while the lab still stands.
		r.waitRocks()
		return nil
	})
}

// failureRun measures one policy and failure mode: a listener with the policy in the
// server's namespace, a client child with the same policy in the client's.
func (r *runner) failureRun(ctx context.Context, lab *labNet, port int, name string, p callbacks.Policy, mode string, reps int, prog func(int)) (FailureResult, error) {
	var l *tcprocks.Listener
	if err := lab.server.Do(func() error {
		var err error
		l, err = tcprocks.Listen("tcp", net.JoinHostPort(lab.serverIP.String(), strconv.Itoa(port)),
			&tcprocks.Config{EDP: serverEDP(), Handler: r.watch, Policy: p, Logger: r.log})
		return err
	}); err != nil {
		return FailureResult{}, err
	}
	defer l.Close()
	// The child dials one rock; its server end is closed before the child ends (a rock whose
	// peer process is gone could not finish closing).
	accepted := make(chan *tcprocks.Conn, 1)
	go func() {
		c, err := l.AcceptConn()
		if err != nil {
			close(accepted)
			return
		}
		r.watch.add(1)
		accepted <- c
	}()
	return r.failurePolicy(ctx, lab, l.Addr().String(), accepted, name, p, mode, reps, prog)
}

func (r *runner) failurePolicy(ctx context.Context, lab *labNet, addr string, accepted <-chan *tcprocks.Conn, name string, p callbacks.Policy, mode string, reps int, prog func(int)) (FailureResult, error) {
	pd := p.WithDefaults()
	fail, heal := lab.link.Down, lab.link.Up
	if mode == "silent" {
		fail, heal = func() error { return lab.link.BlockAll(true) }, func() error { return lab.link.BlockAll(false) }
	}
	causes := map[string]int{}
	res := FailureResult{Policy: name, Failure: mode, Timeout: pd.HeartbeatInterval * time.Duration(pd.MissedHeartbeats),
		BackoffMax: min(pd.BackoffMax, callbacks.FastRetryMax)}
	arg, _ := json.Marshal(childJob{Job: "rock-client", Addr: addr, Policy: p})
	path, args, env := r.cfg.Child(string(arg))
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := lab.client.Command(cctx, path, args...)
	cmd.Env = append(os.Environ(), env...)
	ch, err := startChild(cmd)
	if err != nil {
		return res, err
	}
	defer ch.stop()
	if _, err := ch.next(30*time.Second, "ready"); err != nil {
		return res, err
	}
	select {
	case sc, ok := <-accepted:
		if !ok {
			return res, errors.New("the server accepted no rock")
		}
		defer sc.Close() // before ch.stop: the child waits until its rock has closed
	case <-time.After(30 * time.Second):
		return res, errors.New("the server accepted no rock")
	}
	var det, rec, outage, cmdTimes []float64
	wait := res.Timeout*3 + 10*time.Second
	for rep := range reps {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		prog(rep + 1)
		// Let a heartbeat pass each way on the healthy link.
		time.Sleep(pd.HeartbeatInterval + 100*time.Millisecond)
		down := time.Now()
		if err := fail(); err != nil {
			return res, err
		}
		cmdTimes = append(cmdTimes, time.Since(down).Seconds())
		s, err := ch.next(wait, "suspended")
		if err != nil {
			return res, errors.Join(err, heal())
		}
		causes[s.Err]++
		det = append(det, time.Duration(s.T-down.UnixNano()).Seconds())
		// The outage goes on for a while after the suspension, so that the link returns at a
		// random phase of the reconnection attempts: 0.5 to 1.5 s (quick: 0.2 to 0.4 s).
		time.Sleep(pick(r, 200*time.Millisecond+rand.N(200*time.Millisecond), 500*time.Millisecond+rand.N(time.Second)))
		up := time.Now()
		if err := heal(); err != nil {
			return res, err
		}
		cmdTimes = append(cmdTimes, time.Since(up).Seconds())
		outage = append(outage, up.Sub(down).Seconds())
		e, err := ch.next(wait, "resumed")
		if err != nil {
			return res, err
		}
		rec = append(rec, time.Duration(e.T-up.UnixNano()).Seconds())
	}
	res.Detection, res.Reconnect = summarize(det), summarize(rec)
	res.DetectionRatio = Num(ratio(median(det), res.Timeout.Seconds()))
	res.Outage = Num(median(outage))
	res.Command = Num(median(cmdTimes))
	for c, n := range causes {
		if n > causes[res.Cause] || (n == causes[res.Cause] && c < res.Cause) {
			res.Cause = c
		}
	}
	return res, nil
}

// childCmd makes the command of a child process outside the lab.
func (r *runner) childCmd(ctx context.Context, job childJob) *exec.Cmd {
	arg, _ := json.Marshal(job)
	path, args, env := r.cfg.Child(string(arg))
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}
