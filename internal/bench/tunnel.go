package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/rockudp/rockudp/internal/control"
	"github.com/rockudp/rockudp/internal/testport"
	"github.com/rockudp/rockudp/tcprocks"
	"github.com/rockudp/rockudp/tunnel"
)

// TunnelResult compares ways to reach a UDP echo service on loopback: directly, through
// rockudp's tunnel over a rock (what `rockudp tunnel` runs) and through Debian's udptunnel.
type TunnelResult struct {
	Rows []TunnelRow `json:"rows"`
	// Window is the number of datagrams kept in flight by the rate measurement.
	Window int `json:"window"`
}

// TunnelRow is one path at one datagram size.
type TunnelRow struct {
	Path string `json:"path"` // "direct", "rockudp", "udptunnel"
	Size int    `json:"size"`
	// Rate is echoed datagrams per second with Window in flight.
	Rate Summary `json:"rate"`
	// RTT is the round trip of one datagram at a time, seconds (median of the repetitions'
	// medians; P95 over all).
	RTT Summary `json:"rtt"`
	// Ratios against direct UDP and against udptunnel (rate: higher is better; RTT: lower is).
	RateVsDirect    Num `json:"rate_vs_direct"`
	RateVsUDPTunnel Num `json:"rate_vs_udptunnel"`
	RTTVsDirect     Num `json:"rtt_vs_direct"`
	RTTVsUDPTunnel  Num `json:"rtt_vs_udptunnel"`
	// Lost is the number of datagrams given up on (udptunnel holds some back).
	Lost int `json:"lost"`
}

// udpPath is one way to reach the echo service.
type udpPath struct {
	name  string
	to    *net.UDPAddr
	gen   *net.UDPConn
	close func()
}

const tunnelWindow = 32

func (r *runner) tunnel(ctx context.Context) error {
	sizes := pick(r, []int{512}, []int{64, 1400})
	reps := r.reps(1, 5)
	rateD, rttD := pick(r, 200*time.Millisecond, 600*time.Millisecond), pick(r, 100*time.Millisecond, 300*time.Millisecond)
	var paths []*udpPath
	defer func() {
		for _, p := range paths {
			p.close()
		}
	}()
	for _, name := range []string{"direct", "rockudp", "udptunnel"} {
		p, err := r.udpPath(ctx, name)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if p != nil {
			paths = append(paths, p)
		}
	}
	res := &TunnelResult{Window: tunnelWindow}
	step, steps := 0, len(sizes)*reps
	for _, size := range sizes {
		rates := make([][]float64, len(paths))
		rtts := make([][]float64, len(paths))
		all := make([][]float64, len(paths))
		lost := make([]int, len(paths))
		for rep := range reps {
			step++
			r.progress(step, steps, "%d-byte datagrams, rep %d/%d", size, rep+1, reps)
			for _, i := range order(len(paths), rep) {
				if err := ctx.Err(); err != nil {
					return err
				}
				p := paths[i]
				msg := make([]byte, size)
				rate, l, err := p.rate(msg, tunnelWindow, rateD)
				if err != nil {
					return fmt.Errorf("%s rate: %w", p.name, err)
				}
				rts, l2, err := p.rtt(msg, rttD)
				if err != nil {
					return fmt.Errorf("%s round trip: %w", p.name, err)
				}
				rates[i] = append(rates[i], rate)
				s := seconds(rts)
				rtts[i] = append(rtts[i], median(s))
				all[i] = append(all[i], s...)
				lost[i] += l + l2
			}
		}
		rows := make([]TunnelRow, len(paths))
		for i, p := range paths {
			rows[i] = TunnelRow{Path: p.name, Size: size, Rate: summarize(rates[i]), Lost: lost[i],
				RTT: Summary{Median: Num(median(rtts[i])), P95: Num(percentile(all[i], 95)), N: len(all[i])}}
		}
		find := func(name string) *TunnelRow {
			for i := range rows {
				if rows[i].Path == name {
					return &rows[i]
				}
			}
			return nil
		}
		d, u := find("direct"), find("udptunnel")
		for i := range rows {
			row := &rows[i]
			row.RateVsDirect = Num(ratio(float64(row.Rate.Median), float64(d.Rate.Median)))
			row.RTTVsDirect = Num(ratio(float64(row.RTT.Median), float64(d.RTT.Median)))
			row.RateVsUDPTunnel, row.RTTVsUDPTunnel = Num(nan()), Num(nan())
			if u != nil {
				row.RateVsUDPTunnel = Num(ratio(float64(row.Rate.Median), float64(u.Rate.Median)))
				row.RTTVsUDPTunnel = Num(ratio(float64(row.RTT.Median), float64(u.RTT.Median)))
			}
		}
		res.Rows = append(res.Rows, rows...)
	}
	r.rep.Tunnel = res
	return nil
}

// udpPath starts the echo service and the path called name to it (nil, nil: udptunnel is
// not installed, noted in the report).
func (r *runner) udpPath(ctx context.Context, name string) (*udpPath, error) {
	var closers []func()
	p := &udpPath{name: name, close: func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}}
	fail := func(err error) (*udpPath, error) { p.close(); return nil, err }
	switch name {
	case "direct":
		echo, stop, err := startEcho("127.0.0.1:0", nil)
		if err != nil {
			return nil, err
		}
		closers = append(closers, stop)
		if p.gen, err = listenReuse("127.0.0.1:0"); err != nil {
			return fail(err)
		}
		closers = append(closers, func() { p.gen.Close() })
		p.to = echo
	case "rockudp":
		echo, stop, err := startEcho("127.0.0.1:0", nil)
		if err != nil {
			return nil, err
		}
		closers = append(closers, stop)
		l, err := tcprocks.Listen("tcp", "127.0.0.1:0", r.rockConfig(tcprocks.Config{EDP: serverEDP()}))
		if err != nil {
			return fail(err)
		}
		closers = append(closers, func() { l.Close() })
		acc := make(chan *tcprocks.Conn, 1)
		go func() {
			c, err := l.AcceptConn()
			if err != nil {
				close(acc)
				return
			}
			acc <- c
		}()
		cc, err := control.NewClient(nil)
		if err != nil {
			return fail(err)
		}
		closers = append(closers, func() { r.waitRocks(); cc.Close() })
		rc, err := tcprocks.Dial(ctx, "tcp", l.Addr().String(), r.rockConfig(tcprocks.Config{ControlClient: cc, RequireEnhanced: true}))
		if err != nil {
			return fail(err)
		}
		sc, ok := <-acc
		if !ok {
			rc.Close()
			return fail(errors.New("rock not accepted"))
		}
		r.watch.add(2)
		uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			rc.Close()
			sc.Close()
			return fail(err)
		}
		to := uc.LocalAddr().(*net.UDPAddr)
		cli, err := tunnel.NewClient(rc, uc, nil)
		if err != nil {
			sc.Close()
			return fail(err)
		}
		closers = append(closers, func() { cli.Close() })
		srv, err := tunnel.NewServerAddr(sc, echo, nil)
		if err != nil {
			return fail(err)
		}
		closers = append(closers, func() { srv.Close() })
		if p.gen, err = listenReuse("127.0.0.1:0"); err != nil {
			return fail(err)
		}
		closers = append(closers, func() { p.gen.Close() })
		p.to = to
	case "udptunnel":
		bin, err := exec.LookPath("udptunnel")
		if err != nil {
			r.note("udptunnel is not installed (Debian package udptunnel): its side of the tunnel comparison did not run.")
			return nil, nil
		}
		return r.udptunnelPath(ctx, bin)
	}
	if err := p.ready(); err != nil {
		return fail(err)
	}
	return p, nil
}

// udptunnelPath runs `udptunnel -s` and `udptunnel -c` (see tunnel/bench_test.go for why the
// echo listens on 127.0.0.2 and the generator on 127.0.0.3, on the tunnel's UDP ports).
func (r *runner) udptunnelPath(ctx context.Context, bin string) (p *udpPath, err error) {
	var closers []func()
	p = &udpPath{name: "udptunnel", close: func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	tcpPort, srvPort, cliPort := ports[0], ports[1], ports[2]
	_, stopEcho, err := startEcho(net.JoinHostPort("127.0.0.2", strconv.Itoa(srvPort)),
		&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: srvPort})
	if err != nil {
		return nil, err
	}
	closers = append(closers, stopEcho)
	if p.gen, err = listenReuse(net.JoinHostPort("127.0.0.3", strconv.Itoa(cliPort))); err != nil {
		return nil, err
	}
	closers = append(closers, func() { p.gen.Close() })
	start := func(args ...string) (exited chan struct{}, stop func()) {
		cmd := exec.CommandContext(ctx, bin, args...)
		if err := cmd.Start(); err != nil {
			ch := make(chan struct{})
			close(ch)
			return ch, func() {}
		}
		exited = make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		return exited, func() { _ = cmd.Process.Kill(); <-exited }
	}
	_, stop := start("-s", strconv.Itoa(tcpPort), "127.0.0.2/"+strconv.Itoa(srvPort))
	closers = append(closers, stop)
	// udptunnel -s serves exactly one TCP connection: start the client until it stays up.
	deadline := time.Now().Add(10 * time.Second)
	for {
		exited, stop := start("-c", "127.0.0.1/"+strconv.Itoa(tcpPort), "127.0.0.3/"+strconv.Itoa(cliPort))
		select {
		case <-exited:
			if time.Now().After(deadline) {
				return nil, errors.New("udptunnel -c could not connect to udptunnel -s")
			}
			time.Sleep(20 * time.Millisecond)
			continue
		case <-time.After(300 * time.Millisecond):
		}
		closers = append(closers, stop)
		break
	}
	p.to = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: cliPort}
	return p, p.ready()
}

// freePorts returns n ports of 127.0.0.1 free for TCP and UDP, from below the ephemeral range.
func freePorts(n int) (ports []int, err error) {
	tb := &labTB{}
	defer func() {
		if v := recover(); v != nil {
			a, ok := v.(labAbort)
			if !ok {
				panic(v)
			}
			ports, err = nil, errors.New(a.msg)
		}
	}()
	for range n {
		ports = append(ports, testport.Free(tb))
	}
	return ports, nil
}

// reuseAddr sets SO_REUSEADDR, so a socket can share its port with udptunnel's 0.0.0.0 one.
var reuseAddr = net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	})
	return errors.Join(err, serr)
}}

func listenReuse(addr string) (*net.UDPConn, error) {
	pc, err := reuseAddr.ListenPacket(context.Background(), "udp4", addr)
	if err != nil {
		return nil, err
	}
	c := pc.(*net.UDPConn)
	_ = c.SetReadBuffer(4 << 20)
	_ = c.SetWriteBuffer(4 << 20)
	return c, nil
}

// startEcho starts a batched UDP echo on addr; it replies to the sender, or to replyTo.
func startEcho(addr string, replyTo *net.UDPAddr) (*net.UDPAddr, func(), error) {
	c, err := listenReuse(addr)
	if err != nil {
		return nil, nil, err
	}
	pc := ipv4.NewPacketConn(c)
	var wg sync.WaitGroup
	wg.Go(func() {
		ms := make([]ipv4.Message, 64)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, 65536)}
		}
		for {
			n, err := pc.ReadBatch(ms, 0)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			for i := range ms[:n] {
				ms[i].Buffers[0] = ms[i].Buffers[0][:ms[i].N]
				if replyTo != nil {
					ms[i].Addr = replyTo
				}
			}
			out := ms[:n]
			for len(out) > 0 {
				k, err := pc.WriteBatch(out, 0)
				if err != nil {
					k++
				}
				out = out[k:]
			}
			for i := range ms[:n] {
				ms[i].Buffers[0] = ms[i].Buffers[0][:65536]
			}
		}
	})
	return c.LocalAddr().(*net.UDPAddr), func() { c.Close(); wg.Wait() }, nil
}

// ready waits until an echo comes back through p, then drains late duplicates.
func (p *udpPath) ready() error {
	buf := make([]byte, 65536)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := p.gen.WriteToUDP([]byte("ready?"), p.to); err != nil {
			return err
		}
		_ = p.gen.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := p.gen.Read(buf); err == nil {
			p.drain(buf)
			return nil
		}
	}
	return errors.New("the path never echoed")
}

func (p *udpPath) drain(buf []byte) {
	for {
		_ = p.gen.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := p.gen.Read(buf); err != nil {
			return
		}
	}
}

// rate keeps window datagrams in flight for d and returns echoes per second; a window with
// no echo for 200 ms counts as lost and is refilled.
func (p *udpPath) rate(msg []byte, window int, d time.Duration) (float64, int, error) {
	buf := make([]byte, 65536)
	got, inFlight, lost := 0, 0, 0
	start := time.Now()
	for time.Since(start) < d {
		for inFlight < window {
			if _, err := p.gen.WriteToUDP(msg, p.to); err != nil {
				return 0, lost, err
			}
			inFlight++
		}
		_ = p.gen.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := p.gen.Read(buf); err != nil {
			lost += inFlight
			inFlight = 0
			continue
		}
		got++
		inFlight = max(inFlight-1, 0)
	}
	el := time.Since(start)
	p.drain(buf)
	return float64(got) / el.Seconds(), lost, nil
}

// rtt sends one datagram at a time for d (at least 5) and returns the round trips.
func (p *udpPath) rtt(msg []byte, d time.Duration) ([]time.Duration, int, error) {
	buf := make([]byte, 65536)
	var rts []time.Duration
	lost := 0
	start := time.Now()
	for len(rts) < 5 || time.Since(start) < d {
		t0 := time.Now()
		if _, err := p.gen.WriteToUDP(msg, p.to); err != nil {
			return nil, lost, err
		}
		_ = p.gen.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := p.gen.Read(buf); err != nil {
			lost++
			if lost > 20 {
				return nil, lost, errors.New("more than 20 datagrams lost one at a time")
			}
			continue
		}
		rts = append(rts, time.Since(t0))
	}
	return rts, lost, nil
}
