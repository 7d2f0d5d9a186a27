package bench

import (
	"context"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/control"
	"github.com/rockudp/rockudp/tcprocks"
)

// SetupResult is connection set-up on loopback (Table 1): the time until the application
// holds a usable connection, and where a rock's set-up time goes.
type SetupResult struct {
	Rows      []SetupRow `json:"rows"`      // plain TCP, rock cold, rock cached
	Breakdown []SetupRow `json:"breakdown"` // the parts of a rock's set-up, measured alone
	// Iterations is the number of connections of each kind.
	Iterations int `json:"iterations"`
}

// SetupRow is one kind of set-up: time in seconds and its ratio against plain TCP.
type SetupRow struct {
	Name  string  `json:"name"`
	What  string  `json:"what"`
	Time  Summary `json:"time"`
	Ratio Num     `json:"ratio"` // median / plain TCP's median
	// Background: not part of the time Dial takes (it runs after Dial has returned).
	Background bool `json:"background,omitempty"`
}

func (r *runner) setup(ctx context.Context) error {
	n := r.reps(20, 200)
	// Servers: plain TCP, rocks, a bare EDP listener (negotiation without rocks), a control
	// server.
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer pl.Close()
	go acceptClose(pl)
	rl, err := tcprocks.Listen("tcp", "127.0.0.1:0", r.rockConfig(tcprocks.Config{EDP: serverEDP()}))
	if err != nil {
		return err
	}
	defer rl.Close()
	go func() {
		for {
			c, err := rl.Accept()
			if err != nil {
				return
			}
			r.watch.add(1)
			c.Close()
		}
	}()
	benchEnh := edp.Enhancement{Name: "bench", Version: 1}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	el := edp.NewListener(inner, &edp.Config{Enhancements: []edp.Enhancement{benchEnh}, FirstByteWait: 2 * time.Second})
	defer el.Close()
	go acceptClose(el)
	key := make([]byte, 32)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	cs, err := control.Listen(pc, &control.ServerConfig{Key: func(control.ID) ([]byte, bool) { return key, true }})
	if err != nil {
		pc.Close()
		return err
	}
	// The server keeps its channels until the section ends: closing one at once could
	// overtake its proof on the way to the client.
	chans := make(chan []*control.Channel, 1)
	go func() {
		var all []*control.Channel
		for {
			ch, err := cs.Accept(context.Background())
			if err != nil {
				chans <- all
				return
			}
			all = append(all, ch)
		}
	}()
	defer func() {
		cs.Close()
		for _, ch := range <-chans {
			ch.Close()
		}
	}()
	cc, err := control.NewClient(nil)
	if err != nil {
		return err
	}
	defer func() { r.waitRocks(); cc.Close() }()

	rockCfg := r.rockConfig(tcprocks.Config{ControlClient: cc, ProbeCache: edp.NewCache(time.Hour), RequireEnhanced: true})
	raddr := rl.Addr().String()
	edpCache := edp.NewCache(time.Hour)
	edpCfg := &edp.Config{Enhancements: []edp.Enhancement{benchEnh}, Cache: edpCache}
	type kind struct {
		name, what string
		bg         bool
		run        func() error
	}
	var rocks []*tcprocks.Conn
	defer func() {
		for _, c := range rocks {
			c.Close()
		}
	}()
	dialRock := func(cold bool) func() error {
		return func() error {
			if cold {
				rockCfg.ProbeCache.Invalidate(raddr)
			}
			c, err := tcprocks.Dial(ctx, "tcp", raddr, rockCfg)
			if err == nil {
				r.watch.add(1)
				rocks = append(rocks, c)
			}
			return err
		}
	}
	whole := []kind{
		{"tcp", "plain TCP: net.Dial", false, func() error {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", pl.Addr().String())
			if err == nil {
				c.Close()
			}
			return err
		}},
		{"rock cold", "tcprocks.Dial with an empty probe cache (probe, then connect and negotiate)", false, dialRock(true)},
		{"rock cached", "tcprocks.Dial with the probe result cached (what repeat connections pay)", false, dialRock(false)},
	}
	parts := []kind{
		{"EDP probe", "edp.Probe alone: connect, half-close, read the 1024-byte announcement", false, func() error {
			_, err := edp.Probe(ctx, "tcp", raddr, nil)
			return err
		}},
		{"EDP cached negotiation", "edp.Dial with a cached probe and an enhancement without hooks: connect + one round trip", false, func() error {
			c, err := (&edp.Dialer{Config: edpCfg}).DialContext(ctx, "tcp", el.Addr().String())
			if err == nil {
				c.Close()
			}
			return err
		}},
		{"key exchange", "X25519 key generation and ECDH on both ends + HKDF (CPU only)", false, keyExchange},
		{"control channel", "QUIC handshake + key binding of the control channel (started by Dial, not awaited)", true, func() error {
			ch, err := cc.Dial(ctx, pc.LocalAddr(), control.ID{1}, key)
			if err == nil {
				ch.Close()
			}
			return err
		}},
	}
	all := append(append([]kind{}, whole...), parts...)
	times := make([][]float64, len(all))
	// Prime the caches.
	if err := dialRock(false)(); err != nil {
		return fmt.Errorf("rock dial: %w", err)
	}
	ec, err := (&edp.Dialer{Config: edpCfg}).DialContext(ctx, "tcp", el.Addr().String())
	if err != nil {
		return fmt.Errorf("edp dial: %w", err)
	}
	ec.Close()
	for i := range n {
		if err := ctx.Err(); err != nil {
			return err
		}
		if i%10 == 0 {
			r.progress(i+1, n, "connection set-up: %d of %d rounds of %d kinds", i+1, n, len(all))
		}
		for _, k := range order(len(all), i) {
			settle()
			t0 := time.Now()
			if err := all[k].run(); err != nil {
				return fmt.Errorf("%s: %w", all[k].name, err)
			}
			times[k] = append(times[k], time.Since(t0).Seconds())
		}
		for _, c := range rocks {
			c.Close()
		}
		rocks = rocks[:0]
	}
	res := &SetupResult{Iterations: n}
	base := median(times[0])
	for i, k := range all {
		row := SetupRow{Name: k.name, What: k.what, Time: summarize(times[i]), Background: k.bg}
		row.Ratio = Num(ratio(median(times[i]), base))
		if i < len(whole) {
			res.Rows = append(res.Rows, row)
		} else {
			res.Breakdown = append(res.Breakdown, row)
		}
	}
	r.rep.Setup = res
	return nil
}

// acceptClose accepts and closes connections until l is closed.
func acceptClose(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// keyExchange does the CPU work of a rock's key agreement, both ends: two X25519 key pairs,
// two ECDH computations, and the two HKDF keys each end derives.
func keyExchange() error {
	a, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	b, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	for _, pair := range [][2]*ecdh.PrivateKey{{a, b}, {b, a}} {
		shared, err := pair[0].ECDH(pair[1].PublicKey())
		if err != nil {
			return err
		}
		for _, label := range []string{"resume", "control"} {
			if _, err := hkdf.Key(sha256.New, shared, nil, label, 32); err != nil {
				return err
			}
		}
	}
	return nil
}

// settle waits (up to 250 ms) until this process has been idle for 5 ms, so that what one
// set-up left running in the background (a control channel's handshake, a closing rock)
// does not slow the next one down.
func settle() {
	deadline := time.Now().Add(250 * time.Millisecond)
	for time.Now().Before(deadline) {
		c0 := cpuTime()
		time.Sleep(5 * time.Millisecond)
		if cpuTime()-c0 < 500*time.Microsecond {
			return
		}
	}
}

// cpuTime returns the CPU time (user + system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
