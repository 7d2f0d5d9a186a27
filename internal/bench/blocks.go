package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/control"
	"github.com/rockudp/rockudp/tcprocks"
)

// BlockSizes are the block sizes of Figure 6 (bytes passed to one write).
var blockSizes = []int{1, 10, 100, 1 << 10, 16 << 10, 64 << 10}

// LinkResult is throughput and latency by block size over one link.
type LinkResult struct {
	Link        string     `json:"link"`        // "loopback", "ethernet", "802.11b", "cable"
	Description string     `json:"description"` // how the link was shaped
	Rows        []BlockRow `json:"rows"`
}

// BlockRow compares plain TCP and a rock at one block size. Throughputs are bytes per second
// (median of the repetitions); latencies are round-trip times of one block there and back, in
// seconds (median of the repetitions' medians; P95 over every round trip).
type BlockRow struct {
	Size            int     `json:"size"`
	TCPThroughput   Summary `json:"tcp_throughput"`
	RockThroughput  Summary `json:"rock_throughput"`
	ThroughputRatio Num     `json:"throughput_ratio"` // rock / TCP
	TCPLatency      Summary `json:"tcp_latency"`
	RockLatency     Summary `json:"rock_latency"`
	LatencyRatio    Num     `json:"latency_ratio"` // rock / TCP (medians)
}

// linkProfile is a lab link shaped like one of the paper's.
type linkProfile struct {
	name string
	desc string
	rate uint64        // bits per second
	rtt  time.Duration // added round-trip delay
	loss float64       // percent, each direction
}

var labLinks = []linkProfile{
	{name: "ethernet", desc: "100 Mb/s (100BaseT)", rate: 100e6},
	{name: "802.11b", desc: "5 Mb/s, 3 ms round trip, 1 % loss each way", rate: 5e6, rtt: 3 * time.Millisecond, loss: 1},
	{name: "cable", desc: "1 Mb/s, 20 ms round trip (cable-modem uplink)", rate: 1e6, rtt: 20 * time.Millisecond},
}

// blockParams are the knobs of one link's measurements.
type blockParams struct {
	sizes      []int
	reps       int
	tput, lat  time.Duration // duration of one throughput / latency run
	minRounds  int
	maxRounds  int
	limitBytes int64
}

func (r *runner) blocks(ctx context.Context) error {
	lp := blockParams{
		sizes: pick(r, []int{1, 1 << 10, 64 << 10}, blockSizes),
		reps:  r.reps(2, 7), tput: pick(r, 100*time.Millisecond, 400*time.Millisecond),
		lat: pick(r, 50*time.Millisecond, 200*time.Millisecond), minRounds: 5, maxRounds: 100000,
	}
	links := []linkProfile{}
	if r.lab {
		links = pick(r, labLinks[:1], labLinks)
	}
	steps := (1 + len(links)) * len(lp.sizes) * 2
	step := 0
	prog := func(link string) func(string, int, int) {
		return func(what string, rep, reps int) {
			step++
			r.progress(min(step, steps), steps, "%s: %s, rep %d/%d", link, what, rep, reps)
		}
	}
	// Loopback.
	lo := r.loopbackEnds()
	res, err := r.linkBlocks(ctx, "loopback", "127.0.0.1, no shaping", lo, lp, prog("loopback"))
	if err != nil {
		return err
	}
	r.rep.Links = append(r.rep.Links, res)
	if len(links) == 0 {
		return nil
	}
	return withLab(r.log, func(lab *labNet) error {
		for _, l := range links {
			if err := lab.shape(l); err != nil {
				return err
			}
			p := lp
			p.reps = r.reps(1, 3)
			p.sizes = pick(r, []int{1 << 10, 64 << 10}, blockSizes)
			p.tput = pick(r, 200*time.Millisecond, time.Second)
			p.lat = pick(r, 100*time.Millisecond, 300*time.Millisecond)
			p.minRounds = 3
			p.limitBytes = int64(float64(l.rate) / 8 * p.tput.Seconds())
			res, err := r.linkBlocks(ctx, l.name, l.desc, lab.ends(), p, prog(l.name))
			if err != nil {
				return fmt.Errorf("%s link: %w", l.name, err)
			}
			r.rep.Links = append(r.rep.Links, res)
		}
		return nil
	})
}

// ends says where a contender's two ends live: how to listen on the server and dial from
// the client (on loopback, in this process's namespace; in the lab, in two namespaces).
type ends struct {
	server   func(fn func() error) error // runs fn in the server's namespace
	client   func(fn func() error) error // runs fn in the client's namespace
	listenIP string
	// policy is the rocks' policy. In the lab it is the default: a suspended rock could not
	// reconnect there (its reconnection dials would not run in the client's namespace), so
	// heartbeats must not time out behind a full link queue.
	policy callbacks.Policy
}

func (r *runner) loopbackEnds() ends {
	run := func(fn func() error) error { return fn() }
	return ends{server: run, client: run, listenIP: "127.0.0.1", policy: r.policy}
}

// serverEDP is the listener's EDP configuration: a loaded 2-core machine may take longer
// than a loopback round trip between connect and the client's first bytes.
func serverEDP() *edp.Config { return &edp.Config{FirstByteWait: 2 * time.Second} }

// makePairs connects one plain TCP pair and one rock pair across e.
func (r *runner) makePairs(ctx context.Context, e ends) (tcp, rock *pair, cleanup func(), err error) {
	var cleanups []func()
	cleanup = func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	var pl net.Listener
	var rl *tcprocks.Listener
	err = e.server(func() error {
		var err error
		if pl, err = net.Listen("tcp", net.JoinHostPort(e.listenIP, "0")); err != nil {
			return err
		}
		cfg := r.rockConfig(tcprocks.Config{EDP: serverEDP()})
		cfg.Policy = e.policy
		rl, err = tcprocks.Listen("tcp", net.JoinHostPort(e.listenIP, "0"), cfg)
		return err
	})
	if err != nil {
		if pl != nil {
			pl.Close()
		}
		return nil, nil, nil, err
	}
	cleanups = append(cleanups, func() { pl.Close(); rl.Close() })
	var cc *control.Client
	if err = e.client(func() error {
		var err error
		cc, err = control.NewClient(nil)
		return err
	}); err != nil {
		return nil, nil, nil, err
	}
	// The control client must outlive the rocks' closing (their FIN travels on it).
	cleanups = append(cleanups, func() { r.waitRocks(); cc.Close() })
	cfg := r.rockConfig(tcprocks.Config{ControlClient: cc, ProbeCache: edp.NewCache(time.Hour), RequireEnhanced: true})
	cfg.Policy = e.policy

	tcp, err = connectPair("tcp", pl, func(addr string) (net.Conn, error) {
		var c net.Conn
		err := e.client(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	})
	if err != nil {
		return nil, nil, nil, err
	}
	cleanups = append(cleanups, tcp.close)
	rock, err = connectPair("rock", rl, func(addr string) (net.Conn, error) {
		var c net.Conn
		err := e.client(func() error {
			rc, err := tcprocks.Dial(ctx, "tcp", addr, cfg)
			if err == nil {
				c = rc
			}
			return err
		})
		return c, err
	})
	if err != nil {
		return nil, nil, nil, err
	}
	r.watch.add(2)
	cleanups = append(cleanups, rock.close)
	return tcp, rock, cleanup, nil
}

// connectPair dials l and accepts the connection.
func connectPair(name string, l net.Listener, dial func(addr string) (net.Conn, error)) (*pair, error) {
	type acc struct {
		c   net.Conn
		err error
	}
	ch := make(chan acc, 1)
	go func() {
		c, err := l.Accept()
		ch <- acc{c, err}
	}()
	c, err := dial(l.Addr().String())
	if err != nil {
		l.Close() // unblocks Accept
		<-ch
		return nil, err
	}
	select {
	case a := <-ch:
		if a.err != nil {
			c.Close()
			return nil, a.err
		}
		return newPair(name, c, a.c), nil
	case <-time.After(30 * time.Second):
		c.Close()
		l.Close()
		<-ch
		return nil, errors.New("no connection accepted within 30 s")
	}
}

// linkBlocks measures both contenders at every size over e.
func (r *runner) linkBlocks(ctx context.Context, link, desc string, e ends, p blockParams, prog func(string, int, int)) (LinkResult, error) {
	res := LinkResult{Link: link, Description: desc}
	tcp, rock, cleanup, err := r.makePairs(ctx, e)
	if err != nil {
		return res, err
	}
	defer cleanup()
	pairs := []*pair{tcp, rock}
	// Warm up both (and let the rock's control channel come up) before measuring.
	for _, pr := range pairs {
		if _, err := pr.latency(1, 200*time.Millisecond, 10, 1000); err != nil {
			return res, fmt.Errorf("%s warm-up: %w", pr.name, err)
		}
	}
	for _, size := range p.sizes {
		tput := make([][]float64, 2)
		lat := make([][]float64, 2)    // per-rep medians
		allLat := make([][]float64, 2) // every round trip
		for rep := range p.reps {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			for _, i := range order(2, rep) {
				pr := pairs[i]
				if rep == 0 || p.reps == 1 {
					prog(fmt.Sprintf("%s %s", pr.name, sizeName(size)), rep+1, p.reps)
				}
				bps, err := pr.throughput(size, p.tput, p.limitBytes)
				if err != nil {
					return res, fmt.Errorf("%s %s throughput: %w", pr.name, sizeName(size), err)
				}
				tput[i] = append(tput[i], bps)
				rts, err := pr.latency(size, p.lat, p.minRounds, p.maxRounds)
				if err != nil {
					return res, fmt.Errorf("%s %s latency: %w", pr.name, sizeName(size), err)
				}
				s := seconds(rts)
				lat[i] = append(lat[i], median(s))
				allLat[i] = append(allLat[i], s...)
			}
		}
		row := BlockRow{Size: size,
			TCPThroughput: summarize(tput[0]), RockThroughput: summarize(tput[1]),
			TCPLatency:  Summary{Median: Num(median(lat[0])), P95: Num(percentile(allLat[0], 95)), N: len(allLat[0])},
			RockLatency: Summary{Median: Num(median(lat[1])), P95: Num(percentile(allLat[1], 95)), N: len(allLat[1])},
		}
		row.ThroughputRatio = Num(ratio(float64(row.RockThroughput.Median), float64(row.TCPThroughput.Median)))
		row.LatencyRatio = Num(ratio(float64(row.RockLatency.Median), float64(row.TCPLatency.Median)))
		res.Rows = append(res.Rows, row)
	}
	return res, nil
}

// sizeName formats a block size as in the paper ("1 B", "16 KiB").
func sizeName(n int) string {
	if n >= 1<<10 && n%(1<<10) == 0 {
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
