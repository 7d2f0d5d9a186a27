package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rockudp/rockudp/internal/testport"
)

// TestEcho carries datagrams of every size class, up to the largest IPv4
// allows, over each transport, and checks they arrive intact and unmerged.
func TestEcho(t *testing.T) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			r := newRig(t, tr, rigOptions{})
			sizes := []int{0, 1, 64, 512, 1400, 9000, 32768, MaxPayloadIPv4}
			srcs := []*net.UDPConn{source(t, "udp4"), source(t, "udp4"), source(t, "udp4")}
			var total uint64
			for i, n := range sizes {
				src := srcs[i%len(srcs)]
				b := make([]byte, n)
				for j := range b {
					b[j] = byte(i*7 + j)
				}
				got := roundTrip(t, src, r.cli.LocalAddr(), b)
				if !bytes.Equal(got, b) {
					t.Fatalf("%d-byte datagram came back as %d bytes (or altered)", n, len(got))
				}
				total += uint64(n)
			}
			want := uint64(len(sizes))
			// A reply can reach its source before either sender has counted it.
			waitFor(t, "the counters", func() bool {
				return r.cli.Stats().DatagramsOut == want && r.srv.Stats().DatagramsOut == want
			})
			cs, ss := r.cli.Stats(), r.srv.Stats()
			if cs.DatagramsIn != want || cs.DatagramsOut != want || ss.DatagramsIn != want || ss.DatagramsOut != want {
				t.Fatalf("datagram counters: client %+v server %+v", cs, ss)
			}
			if cs.BytesIn != total || cs.BytesOut != total || ss.BytesIn != total || ss.BytesOut != total {
				t.Fatalf("byte counters: client in %d out %d, server in %d out %d, want %d",
					cs.BytesIn, cs.BytesOut, ss.BytesIn, ss.BytesOut, total)
			}
			if cs.Flows != len(srcs) || ss.Flows != len(srcs) || cs.FlowsOpened != uint64(len(srcs)) {
				t.Fatalf("flows: client %d (opened %d), server %d", cs.Flows, cs.FlowsOpened, ss.Flows)
			}
			if cs.Dropped() != 0 || ss.Dropped() != 0 {
				t.Fatalf("drops: client %v server %v", cs.Drops, ss.Drops)
			}
		})
	}
}

// TestBurstNoMerge sends bursts from several flows at once, so that frames
// are batched on the rock, and checks every datagram comes back separately.
func TestBurstNoMerge(t *testing.T) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) {
			r := newRig(t, tr, rigOptions{})
			const flows, per = 8, 50
			var wg sync.WaitGroup
			errs := make(chan error, flows)
			for f := range flows {
				src := source(t, "udp4")
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- burst(src, r.cli.LocalAddr(), f, per)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if w := r.cli.Stats().RockWrites; w >= flows*per {
				t.Logf("note: %d rock writes for %d datagrams (no batching happened)", w, flows*per)
			}
		})
	}
}

// burst sends per datagrams of varied sizes and checks the echoes.
func burst(src *net.UDPConn, to net.Addr, f, per int) error {
	sent := make([][]byte, per)
	for i := range per {
		b := make([]byte, 8+(i*37+f*101)%1500)
		binary.BigEndian.PutUint32(b, uint32(f))
		binary.BigEndian.PutUint32(b[4:], uint32(i))
		sent[i] = b
		if _, err := src.WriteTo(b, to); err != nil {
			return err
		}
	}
	buf := make([]byte, 65536)
	for i := range per {
		_ = src.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := src.Read(buf)
		if err != nil {
			return fmt.Errorf("flow %d: reply %d: %w", f, i, err)
		}
		if !bytes.Equal(buf[:n], sent[i]) {
			return fmt.Errorf("flow %d: reply %d is %d bytes, want %d (or altered)", f, i, n, len(sent[i]))
		}
	}
	return nil
}

// TestThousandFlows opens 1,000 flows at once; each gets its own replies.
func TestThousandFlows(t *testing.T) {
	r := newRig(t, overTCP, rigOptions{})
	const n = 1000
	srcs := make([]*net.UDPConn, n)
	for i := range srcs {
		srcs[i] = source(t, "udp4")
	}
	for i, src := range srcs {
		if _, err := src.WriteTo([]byte(fmt.Sprint("flow ", i)), r.cli.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 100)
	for i, src := range srcs {
		_ = src.SetReadDeadline(time.Now().Add(20 * time.Second))
		k, err := src.Read(buf)
		if err != nil || string(buf[:k]) != fmt.Sprint("flow ", i) {
			t.Fatalf("flow %d: got %q, %v", i, buf[:k], err)
		}
	}
	cs, ss := r.cli.Stats(), r.srv.Stats()
	if cs.Flows != n || ss.Flows != n || ss.FlowsOpened != n {
		t.Fatalf("flows: client %d, server %d (opened %d)", cs.Flows, ss.Flows, ss.FlowsOpened)
	}
}

// TestIdleExpiry checks that idle flows end on both sides, and that a
// source that speaks again gets a new flow.
func TestIdleExpiry(t *testing.T) {
	cfg := &Config{IdleTimeout: 150 * time.Millisecond}
	r := newRig(t, overTCP, rigOptions{cli: cfg, srv: cfg})
	srcs := []*net.UDPConn{source(t, "udp4"), source(t, "udp4"), source(t, "udp4")}
	for _, src := range srcs {
		roundTrip(t, src, r.cli.LocalAddr(), []byte("hi"))
	}
	waitFor(t, "idle flows to close", func() bool {
		return r.cli.Stats().Flows == 0 && r.srv.Stats().Flows == 0
	})
	if c := r.cli.Stats().FlowsClosed; c != 3 {
		t.Fatalf("client closed %d flows, want 3", c)
	}
	for _, src := range srcs {
		if got := roundTrip(t, src, r.cli.LocalAddr(), []byte("again")); string(got) != "again" {
			t.Fatalf("got %q", got)
		}
	}
	if o := r.srv.Stats().FlowsOpened; o != 6 {
		t.Fatalf("server opened %d flows, want 6", o)
	}
	// A flow kept busy does not expire, though it outlives the timeout
	// several times (a longer timeout here: a loaded machine may stall).
	long := &Config{IdleTimeout: time.Second}
	r2 := newRig(t, overTCP, rigOptions{cli: long, srv: long})
	busy := source(t, "udp4")
	start := time.Now()
	for time.Since(start) < 3*long.IdleTimeout {
		roundTrip(t, busy, r2.cli.LocalAddr(), []byte("busy"))
		time.Sleep(long.IdleTimeout / 50)
	}
	if o := r2.srv.Stats().FlowsOpened; o != 1 {
		t.Fatalf("a busy flow was re-opened: server opened %d flows", o)
	}
}

// TestFlowLimit checks both sides' flow bounds.
func TestFlowLimit(t *testing.T) {
	t.Run("client", func(t *testing.T) {
		r := newRig(t, overTCP, rigOptions{cli: &Config{MaxFlows: 5}})
		var ok, failed int
		for range 8 {
			src := source(t, "udp4")
			if _, err := src.WriteTo([]byte("x"), r.cli.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the datagram to be handled", func() bool {
				s := r.cli.Stats()
				return s.Flows+int(s.Drops[DropFlowLimit]) == ok+failed+1
			})
			_ = src.SetReadDeadline(time.Now().Add(20 * time.Second))
			if r.cli.Stats().Drops[DropFlowLimit] > uint64(failed) {
				failed++
				continue
			}
			if _, err := src.Read(make([]byte, 10)); err != nil {
				t.Fatal(err)
			}
			ok++
		}
		if ok != 5 || failed != 3 {
			t.Fatalf("%d flows served, %d refused; want 5 and 3", ok, failed)
		}
	})
	t.Run("server", func(t *testing.T) {
		r := newRig(t, overTCP, rigOptions{srv: &Config{MaxFlows: 2}})
		for range 2 {
			roundTrip(t, source(t, "udp4"), r.cli.LocalAddr(), []byte("x"))
		}
		src := source(t, "udp4")
		if _, err := src.WriteTo([]byte("refused"), r.cli.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		// The server refuses the third flow; the client forgets it.
		waitFor(t, "the refusal", func() bool {
			s := r.srv.Stats()
			return s.Drops[DropFlowLimit] == 1 && s.Drops[DropUnknownFlow] == 1 && r.cli.Stats().Flows == 2
		})
		if s := r.srv.Stats(); s.Flows != 2 || s.Drops[DropUnknownFlow] != 1 {
			t.Fatalf("server: %d flows, unknown-flow drops %d", s.Flows, s.Drops[DropUnknownFlow])
		}
	})
}

// TestTooBig: a datagram larger than the far end can send is dropped and
// counted, never truncated.
func TestTooBig(t *testing.T) {
	r := newRig(t, overTCP, rigOptions{udp6: true})
	src := source(t, "udp6")
	// Wait for the server's Hello (its service is IPv4: 65,507 bytes at most).
	roundTrip(t, src, r.cli.LocalAddr(), []byte("hello"))
	big := make([]byte, MaxPayloadIPv4+1)
	if _, err := src.WriteTo(big, r.cli.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the too-big drop", func() bool { return r.cli.Stats().Drops[DropTooBig] == 1 })
	if b := r.cli.Stats().DroppedBytes[DropTooBig]; b != uint64(len(big)) {
		t.Fatalf("dropped %d bytes, want %d", b, len(big))
	}
	if got := roundTrip(t, src, r.cli.LocalAddr(), big[:MaxPayloadIPv4]); len(got) != MaxPayloadIPv4 {
		t.Fatalf("largest datagram came back with %d bytes", len(got))
	}
	if d := r.srv.Stats().Dropped(); d != 0 {
		t.Fatalf("server dropped %d", d)
	}
}

// TestMalformed: bad frames close that tunnel's rock with a clear log line
// and leave other tunnels running.
func TestMalformed(t *testing.T) {
	good := newRig(t, overPipe, rigOptions{})
	src := source(t, "udp4")
	roundTrip(t, src, good.cli.LocalAddr(), []byte("before"))

	hello := AppendHello(nil, Hello{Version: Version})
	cases := map[string][]byte{
		"unknown type":     AppendHeader(append([]byte(nil), hello...), 42, 1, 0, 0),
		"oversized length": AppendHeader(append([]byte(nil), hello...), FrameData, 1, 0, 65535),
		"no hello":         AppendFrame(nil, Frame{Type: FrameOpen, Flow: 1}),
		"open from server": AppendFrame(append([]byte(nil), hello...), Frame{Type: FrameOpen, Flow: 1}),
		"reused flow id": AppendFrame(AppendFrame(append([]byte(nil), hello...),
			Frame{Type: FrameOpen, Flow: 5}), Frame{Type: FrameOpen, Flow: 5}),
	}
	for name, in := range cases {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			for _, side := range []string{"server", "client"} {
				if name == "open from server" && side == "server" || name == "reused flow id" && side == "client" {
					continue
				}
				lb := &logBuffer{}
				a, b := net.Pipe()
				var end interface {
					Done() <-chan struct{}
					Err() error
					Close() error
				}
				cfg := withLogger(nil, lb)
				if side == "server" {
					sv, err := NewServer(a, "127.0.0.1:9", cfg)
					if err != nil {
						t.Fatal(err)
					}
					end = sv
				} else {
					uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
					if err != nil {
						t.Fatal(err)
					}
					c, err := NewClient(a, uc, cfg)
					if err != nil {
						t.Fatal(err)
					}
					end = c
				}
				go io.Copy(io.Discard, b) // the end's own Hello
				// The header alone is enough to reject an oversized length.
				if _, err := b.Write(in); err != nil {
					t.Fatal(err)
				}
				select {
				case <-end.Done():
				case <-time.After(20 * time.Second):
					t.Fatalf("%s: tunnel still running after %s", side, name)
				}
				if !errors.Is(end.Err(), ErrMalformed) {
					t.Fatalf("%s: Err() = %v, want ErrMalformed", side, end.Err())
				}
				if !strings.Contains(lb.String(), "malformed frame") {
					t.Fatalf("%s: log has no clear line: %q", side, lb.String())
				}
				// The rock is closed: the peer sees EOF.
				if _, err := b.Write(make([]byte, 1)); err == nil {
					t.Fatalf("%s: rock still open", side)
				}
				end.Close()
				b.Close()
			}
		})
	}
	if got := roundTrip(t, src, good.cli.LocalAddr(), []byte("after")); string(got) != "after" {
		t.Fatalf("other tunnel: got %q", got)
	}
}

// TestClose checks Close's contract: idempotent, ends both goroutines and
// sockets, and the far end ends too when the rock closes.
func TestClose(t *testing.T) {
	r := newRig(t, overTCP, rigOptions{})
	src := source(t, "udp4")
	roundTrip(t, src, r.cli.LocalAddr(), []byte("x"))
	if err := r.cli.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.cli.Close(); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(r.cli.Err(), net.ErrClosed) {
		t.Fatalf("Err() = %v", r.cli.Err())
	}
	select {
	case <-r.srv.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("server still running after the client closed")
	}
	if !errors.Is(r.srv.Err(), net.ErrClosed) {
		t.Fatalf("server Err() = %v", r.srv.Err())
	}
	if r.srv.Stats().Flows != 0 {
		t.Fatalf("server flows still open")
	}
}

// TestNilConfig: a nil Config works and the defaults are documented values.
func TestNilConfig(t *testing.T) {
	d := (*Config)(nil).withDefaults()
	if d.MaxQueue != DefaultMaxQueue || d.MaxFlows != DefaultMaxFlows || d.IdleTimeout != DefaultIdleTimeout ||
		d.BatchSize != DefaultBatchSize || d.SocketBuffer != DefaultSocketBuffer || d.Logger == nil || d.MaxAge != 0 {
		t.Fatalf("defaults: %+v", d)
	}
	c := &Config{MaxQueue: 1}
	if c.withDefaults().MaxQueue < MaxFrameLen || c.MaxQueue != 1 {
		t.Fatal("MaxQueue below one frame, or the caller's Config was modified")
	}
	if _, err := NewClient(nil, nil, nil); err == nil {
		t.Fatal("NewClient(nil, nil) succeeded")
	}
	a, b := net.Pipe()
	defer b.Close()
	if _, err := NewServer(a, "no-such-host.invalid:1", nil); err == nil {
		t.Fatal("NewServer with a bad address succeeded")
	}
}

// TestWildcardReplySource: on a client socket bound to a wildcard address,
// replies leave from the address each source sent to, so connected UDP
// sources (which accept nothing else) get them. IPv4 on 0.0.0.0, and IPv4
// and IPv6 on a dual-stack [::] socket.
func TestWildcardReplySource(t *testing.T) {
	for _, tc := range []struct{ listen, network, dst string }{
		{"0.0.0.0:0", "udp4", "127.0.0.7"},
		{"[::]:0", "udp4", "127.0.0.9"},
		{"[::]:0", "udp6", "::1"},
	} {
		t.Run(tc.listen+"/"+tc.dst, func(t *testing.T) {
			r := newRig(t, overTCP, rigOptions{listen: tc.listen})
			port := r.cli.LocalAddr().(*net.UDPAddr).Port
			src, err := net.DialUDP(tc.network, nil, &net.UDPAddr{IP: net.ParseIP(tc.dst), Port: port})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			for _, msg := range []string{"one", "two"} {
				if _, err := src.Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 10)
				_ = src.SetReadDeadline(time.Now().Add(20 * time.Second))
				n, err := src.Read(buf)
				if err != nil || string(buf[:n]) != msg {
					t.Fatalf("reply to %q: %q, %v", msg, buf[:n], err)
				}
			}
		})
	}
}

// TestServiceDown: while nothing listens at the server's address, datagrams
// are lost (ICMP errors are absorbed, sends that fail are counted); once the
// service is up the same flow works.
func TestServiceDown(t *testing.T) {
	// A port below the ephemeral range: no socket of another test takes it meanwhile.
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: testport.Free(t)}
	a, b := net.Pipe()
	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(a, uc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sv, err := NewServerAddr(b, to, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sv.Close()
	src := source(t, "udp4")
	for range 5 {
		if _, err := src.WriteTo([]byte("nobody home"), c.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the datagrams to be sent or dropped", func() bool {
		st := sv.Stats()
		return st.DatagramsOut+st.Drops[DropSendError] == 5
	})
	svc, err := net.ListenUDP("udp", to)
	if err != nil {
		t.Fatalf("the service's port: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); serve(svc, false, nil) }()
	defer func() { svc.Close(); wg.Wait() }()
	if got := roundTrip(t, src, c.LocalAddr(), []byte("up")); string(got) != "up" {
		t.Fatalf("got %q", got)
	}
	if sv.Err() != nil || sv.Stats().FlowsOpened != 1 {
		t.Fatalf("server: %v, %d flows opened", sv.Err(), sv.Stats().FlowsOpened)
	}
}
