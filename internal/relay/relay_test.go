package relay

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestTCPForward(t *testing.T) {
	for _, noSplice := range []bool{false, true} {
		t.Run(fmt.Sprintf("DisableSplice=%v", noSplice), func(t *testing.T) {
			srv := newServer(t)
			r := newRelay(t, srv.addr(), &Config{DisableSplice: noSplice})
			client, server := connect(t, r, srv)

			// Stream both ways at once and compare digests.
			const size = 16 << 20
			var wg sync.WaitGroup
			var upSum, downSum [2][sha256.Size]byte
			stream := func(w, rd net.Conn, sums *[2][sha256.Size]byte, seed uint64) {
				defer wg.Done()
				wg.Add(1)
				go func() {
					defer wg.Done()
					h := sha256.New()
					io.Copy(h, io.LimitReader(rd, size))
					copy(sums[1][:], h.Sum(nil))
				}()
				h := sha256.New()
				src := io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), size)
				io.Copy(io.MultiWriter(w, h), src)
				copy(sums[0][:], h.Sum(nil))
			}
			wg.Add(2)
			go stream(client, server, &upSum, 1)
			go stream(server, client, &downSum, 2)
			wg.Wait()
			if upSum[0] != upSum[1] || downSum[0] != downSum[1] {
				t.Fatal("streamed bytes differ")
			}

			// Half-close: the client's FIN reaches the server, which can still reply.
			client.CloseWrite()
			if err := readErr(t, server); err != io.EOF {
				t.Fatalf("server read after client FIN: %v", err)
			}
			exchange(t, server, client, "bye")
			server.CloseWrite()
			if err := readErr(t, client); err != io.EOF {
				t.Fatalf("client read after server FIN: %v", err)
			}
			waitFor(t, "pair to close", func() bool { return r.Pairs() == 0 })
			s := r.Stats()
			if s.BytesUp != size+4 || s.BytesDown != size+4+3 || s.Accepted != 1 || s.Active != 0 || s.Faults != 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

func TestUDPForward(t *testing.T) {
	srv := newServer(t)
	r := newRelay(t, srv.addr(), &Config{UDPIdleTimeout: 200 * time.Millisecond})
	if r.UDPAddr().(*net.UDPAddr).Port != r.Addr().(*net.TCPAddr).Port {
		t.Fatalf("UDP %v and TCP %v ports differ", r.UDPAddr(), r.Addr())
	}
	a, b := dialUDP(t, r.UDPAddr()), dialUDP(t, r.UDPAddr())
	upA := udpRoundTrip(t, a, "a1", patience)
	upB := udpRoundTrip(t, b, "b1", patience)
	if upA == "" || upB == "" || upA == upB {
		t.Fatalf("upstream addresses %q and %q: want two distinct flows", upA, upB)
	}
	if got := udpRoundTrip(t, a, "a2", patience); got != upA {
		t.Fatalf("second datagram of a flow left from %q, not %q", got, upA)
	}
	// A datagram is counted after its write returns, which may be after the echo arrived.
	waitFor(t, "the datagram counters", func() bool {
		s := r.Stats()
		return s.DatagramsUp >= 3 && s.DatagramsDown >= 3
	})
	if s := r.Stats(); s.UDPFlows != 2 || s.DatagramsUp != 3 || s.DatagramsDown != 3 {
		t.Fatalf("stats %+v", s)
	}
	waitFor(t, "idle flows to expire", func() bool { return r.Stats().UDPFlows == 0 })
	if got := udpRoundTrip(t, a, "a3", patience); got == "" || got == upA {
		t.Fatalf("after expiry the flow left from %q (before: %q)", got, upA)
	}
}

func TestCut(t *testing.T) {
	srv := newServer(t)
	r := newRelay(t, srv.addr(), nil)
	client, server := connect(t, r, srv)
	u := dialUDP(t, r.UDPAddr())
	before := udpRoundTrip(t, u, "x", patience)

	r.Cut()
	if n := r.Stats().UDPFlows; n != 0 {
		t.Fatalf("%d UDP flows after Cut", n)
	}
	if err := readErr(t, client); err != io.EOF {
		t.Fatalf("client: %v, want EOF", err)
	}
	if err := readErr(t, server); err != io.EOF {
		t.Fatalf("server: %v, want EOF", err)
	}
	client.Close()
	server.Close()
	waitFor(t, "cut pair to go", func() bool { return r.Pairs() == 0 })
	if s := r.Stats(); s.Faults != 1 {
		t.Fatalf("faults %d, want 1", s.Faults)
	}

	if after := udpRoundTrip(t, u, "y", patience); after == "" || after == before {
		t.Fatalf("after Cut the flow left from %q (before: %q)", after, before)
	}

	// New connections are not affected.
	connect(t, r, srv)
}

func TestCutWhileStreaming(t *testing.T) {
	srv := newServer(t)
	r := newRelay(t, srv.addr(), nil)
	client, server := connect(t, r, srv)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the server streams until the relay's FIN makes it stop
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			if _, err := server.Write(buf); err != nil {
				return
			}
		}
	}()
	got := make(chan error, 1)
	go func() { got <- readErr(t, client) }()
	waitFor(t, "bytes to flow", func() bool { return r.Stats().BytesDown > 1<<20 })
	r.Cut()
	if err := <-got; err != io.EOF {
		t.Fatalf("client: %v, want EOF", err)
	}
	if err := readErr(t, server); err != io.EOF {
		t.Fatalf("server: %v, want EOF", err)
	}
	server.Close()
	wg.Wait()
	client.Close()
	waitFor(t, "cut pair to go", func() bool { return r.Pairs() == 0 })
}

func TestReset(t *testing.T) {
	srv := newServer(t)
	r := newRelay(t, srv.addr(), nil)
	client, server := connect(t, r, srv)
	r.Reset()
	for name, c := range map[string]net.Conn{"client": client, "server": server} {
		if err := readErr(t, c); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: %v, want ECONNRESET", name, err)
		}
	}
	waitFor(t, "reset pair to go", func() bool { return r.Pairs() == 0 })
	if s := r.Stats(); s.Faults != 1 {
		t.Fatalf("faults %d, want 1", s.Faults)
	}
	connect(t, r, srv)
}

func TestPeerResetPropagates(t *testing.T) {
	srv := newServer(t)
	r := newRelay(t, srv.addr(), nil)
	client, server := connect(t, r, srv)
	server.SetLinger(0)
	server.Close()
	if err := readErr(t, client); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client: %v, want ECONNRESET", err)
	}
	if s := r.Stats(); s.Faults != 0 {
		t.Fatalf("faults %d, want 0", s.Faults)
	}
}

func TestBlackhole(t *testing.T) {
	srv := newServer(t)
	r := newRelay(t, srv.addr(), nil)
	client, server := connect(t, r, srv)
	u := dialUDP(t, r.UDPAddr())
	if udpRoundTrip(t, u, "u0", patience) == "" {
		t.Fatal("no UDP echo")
	}

	r.Blackhole(true)
	client.Write([]byte("up"))
	server.Write([]byte("down"))
	expectSilence(t, server)
	expectSilence(t, client)
	late := dial(t, r.Addr())
	if c := srv.accept(t, quiet); c != nil {
		t.Fatal("a new connection reached the target during the blackhole")
	}
	if udpRoundTrip(t, u, "u1", quiet) != "" {
		t.Fatal("UDP got through the blackhole")
	}

	r.Blackhole(false)
	expect(t, server, "up")
	expect(t, client, "down")
	lateServer := srv.accept(t, patience)
	if lateServer == nil {
		t.Fatal("stalled connection did not reach the target after the blackhole")
	}
	exchange(t, late, lateServer, "late")
	if udpRoundTrip(t, u, "u2", patience) == "" {
		t.Fatal("UDP did not resume")
	}
	if s := r.Stats(); s.Dropped == 0 || s.Faults != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// counterStream writes the byte sequence 0,1,2,... (mod 251) to c.
func counterStream(c net.Conn, stop *atomic.Bool) (int64, error) {
	buf := make([]byte, 64<<10)
	var off int64
	for !stop.Load() {
		for i := range buf {
			buf[i] = byte((off + int64(i)) % 251)
		}
		n, err := c.Write(buf)
		off += int64(n)
		if err != nil {
			return off, err
		}
	}
	return off, nil
}

// counterCheck reads c to EOF, checking the counterStream sequence and
// counting bytes in *n.
func counterCheck(c net.Conn, n *atomic.Int64) error {
	buf := make([]byte, 64<<10)
	var off int64
	for {
		k, err := c.Read(buf)
		for i := range k {
			if buf[i] != byte((off+int64(i))%251) {
				return fmt.Errorf("byte %d is %d, want %d", off+int64(i), buf[i], (off+int64(i))%251)
			}
		}
		off += int64(k)
		n.Store(off)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// TestBlackholeWhileStreaming checks that a blackhole stops a spliced stream
// (once bytes already in socket buffers are read) and that it resumes intact.
func TestBlackholeWhileStreaming(t *testing.T) {
	srv := newServer(t)
	r := newRelay(t, srv.addr(), nil)
	client, server := connect(t, r, srv)

	var stop atomic.Bool
	var got atomic.Int64
	sent := make(chan int64, 1)
	checked := make(chan error, 1)
	go func() {
		n, _ := counterStream(client, &stop)
		client.CloseWrite()
		sent <- n
	}()
	go func() { checked <- counterCheck(server, &got) }()

	waitFor(t, "stream to start", func() bool { return got.Load() > 8<<20 })
	r.Blackhole(true)
	// Wait until what was in flight has been read, then watch it stay still.
	last := int64(-1)
	waitFor(t, "stream to stall", func() bool {
		n := got.Load()
		if n == last {
			return true
		}
		last = n
		time.Sleep(100 * time.Millisecond)
		return false
	})
	held := r.Stats().BytesUp
	time.Sleep(quiet)
	if n := got.Load(); n != last {
		t.Fatalf("%d bytes arrived during the blackhole", n-last)
	}
	r.Blackhole(false)
	waitFor(t, "stream to resume", func() bool { return got.Load() > last+8<<20 })
	if r.Stats().BytesUp < held {
		t.Fatal("byte counter went back")
	}
	stop.Store(true)
	n := <-sent
	if err := <-checked; err != nil {
		t.Fatal(err)
	}
	if got.Load() != n {
		t.Fatalf("received %d bytes, sent %d", got.Load(), n)
	}
}

// TestModeSwitching streams both ways while faults that change the
// forwarding mode come and go, and checks every byte.
func TestModeSwitching(t *testing.T) {
	for _, noSplice := range []bool{false, true} {
		t.Run(fmt.Sprintf("DisableSplice=%v", noSplice), func(t *testing.T) {
			srv := newServer(t)
			r := newRelay(t, srv.addr(), &Config{DisableSplice: noSplice})
			client, server := connect(t, r, srv)

			const want = 48 << 20
			var stop atomic.Bool
			var upGot, downGot atomic.Int64
			sent := make(chan int64, 2)
			checked := make(chan error, 2)
			for _, c := range [][2]net.Conn{{client, server}, {server, client}} {
				w, rd := c[0].(*net.TCPConn), c[1]
				go func() {
					n, _ := counterStream(w, &stop)
					w.CloseWrite()
					sent <- n
				}()
				n := &upGot
				if rd == client {
					n = &downGot
				}
				go func() { checked <- counterCheck(rd, n) }()
			}

			rng := rand.New(rand.NewPCG(1, 2))
			toggles := 0
			for upGot.Load() < want || downGot.Load() < want || toggles < 150 {
				switch rng.IntN(4) {
				case 0:
					r.Blackhole(true)
					time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
					r.Blackhole(false)
				case 1:
					r.SetDelay(time.Duration(rng.IntN(3)) * time.Millisecond)
				case 2:
					r.SetDelay(0)
				}
				toggles++
				time.Sleep(time.Duration(rng.IntN(10)) * time.Millisecond)
				if toggles > 100000 {
					t.Fatal("stream does not progress")
				}
			}
			r.SetDelay(0)
			stop.Store(true)
			total := <-sent + <-sent
			for range 2 {
				if err := <-checked; err != nil {
					t.Fatal(err)
				}
			}
			if upGot.Load()+downGot.Load() != total {
				t.Fatalf("received %d bytes, sent %d", upGot.Load()+downGot.Load(), total)
			}
			t.Logf("%d mode changes over %d MiB", toggles, total>>20)
		})
	}
}

func TestBlockUDP(t *testing.T) {
	srv := newServer(t)
	r := newRelay(t, srv.addr(), nil)
	u := dialUDP(t, r.UDPAddr())
	if udpRoundTrip(t, u, "a", patience) == "" {
		t.Fatal("no UDP echo")
	}
	r.BlockUDP(true)
	if udpRoundTrip(t, u, "b", quiet) != "" {
		t.Fatal("UDP got through BlockUDP")
	}
	connect(t, r, srv) // TCP still flows
	r.BlockUDP(false)
	if udpRoundTrip(t, u, "c", patience) == "" {
		t.Fatal("UDP did not resume")
	}
	if s := r.Stats(); s.Dropped != 1 || s.Faults != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDelay(t *testing.T) {
	const d = 100 * time.Millisecond
	srv := newServer(t)
	r := newRelay(t, srv.addr(), nil)
	client, server := connect(t, r, srv)
	u := dialUDP(t, r.UDPAddr())
	if udpRoundTrip(t, u, "warm", patience) == "" {
		t.Fatal("no UDP echo")
	}

	r.SetDelay(d)
	start := time.Now()
	exchange(t, client, server, "ping")
	exchange(t, server, client, "pong")
	if rtt := time.Since(start); rtt < 2*d {
		t.Fatalf("TCP round trip %v with a one-way delay of %v", rtt, d)
	}
	start = time.Now()
	if udpRoundTrip(t, u, "late", patience) == "" {
		t.Fatal("no UDP echo")
	}
	if rtt := time.Since(start); rtt < 2*d {
		t.Fatalf("UDP round trip %v with a one-way delay of %v", rtt, d)
	}

	// Order is kept, for many small writes and datagrams in flight at once.
	var want bytes.Buffer
	for i := range 200 {
		msg := fmt.Sprintf("%d,", i)
		want.WriteString(msg)
		client.Write([]byte(msg))
		u.Write([]byte(msg))
	}
	expect(t, server, want.String())
	buf := make([]byte, 100)
	for i := range 200 {
		u.SetReadDeadline(time.Now().Add(patience))
		n, err := u.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if got, msg := string(buf[:n]), fmt.Sprintf("%d,|", i); len(got) < len(msg) || got[:len(msg)] != msg {
			t.Fatalf("datagram %d is %q", i, got)
		}
	}

	r.SetDelay(0)
	exchange(t, client, server, "fast")
	if s := r.Stats(); s.Faults != 1 {
		t.Fatalf("faults %d, want 1", s.Faults)
	}
}

func TestRefuse(t *testing.T) {
	srv := newServer(t)
	r := newRelay(t, srv.addr(), nil)
	kept, keptServer := connect(t, r, srv)

	r.Refuse(true)
	if err := dialReset(t, r.Addr()); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("refused connection: %v, want ECONNRESET", err)
	}
	if s := srv.accept(t, quiet); s != nil {
		t.Fatal("a refused connection reached the target")
	}
	exchange(t, kept, keptServer, "still here")

	r.Refuse(false)
	connect(t, r, srv)
	if s := r.Stats(); s.Refused != 1 || s.Accepted != 3 || s.Faults != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDialFailure(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := l.Addr().String()
	l.Close() // nothing listens there now
	r := newRelay(t, target, nil)
	if err := dialReset(t, r.Addr()); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client: %v, want ECONNRESET", err)
	}
	waitFor(t, "failed pair to go", func() bool { return r.Pairs() == 0 })
	if s := r.Stats(); s.DialFails != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestSetTarget(t *testing.T) {
	one, two := newServer(t), newServer(t)
	r := newRelay(t, one.addr(), nil)
	c1, s1 := connect(t, r, one)
	if err := r.SetTarget(two.addr()); err != nil {
		t.Fatal(err)
	}
	if r.Target() != two.addr() {
		t.Fatalf("Target() = %q", r.Target())
	}
	connect(t, r, two)
	exchange(t, c1, s1, "old pair still on the first server")
	if r.Pairs() != 2 {
		t.Fatalf("Pairs() = %d", r.Pairs())
	}
	if err := r.SetTarget("no port"); err == nil {
		t.Fatal("SetTarget accepted a bad address")
	}
}

func TestListen(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_, err = New("127.0.0.1:1", &Config{Listen: pc.LocalAddr().String()})
	if err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("New on a taken UDP port: %v", err)
	}
	if _, err := New("nonsense", nil); err == nil {
		t.Fatal("New accepted a bad target")
	}

	// IPv6 loopback, to an IPv4 target.
	srv := newServer(t)
	r, err := New(srv.addr(), &Config{Listen: "[::1]:0"})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("IPv6 loopback: %v", err)
		}
		t.Skipf("no IPv6 loopback: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	if r.UDPAddr().(*net.UDPAddr).Port != r.Addr().(*net.TCPAddr).Port {
		t.Fatalf("UDP %v and TCP %v ports differ", r.UDPAddr(), r.Addr())
	}
	connect(t, r, srv)
	if udpRoundTrip(t, dialUDP(t, r.UDPAddr()), "v6", patience) == "" {
		t.Fatal("no UDP echo over IPv6")
	}
}

func TestClose(t *testing.T) {
	srv := newServer(t)
	r, err := New(srv.addr(), &Config{CutLinger: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	active, _ := connect(t, r, srv)
	cut, cutServer := connect(t, r, srv)
	cutServer.Write(make([]byte, 1<<20)) // keeps the cut pair draining
	r.SetDelay(time.Hour)
	r.Cut()
	r.SetDelay(0)
	r.Blackhole(true)
	stalled := dial(t, r.Addr())
	waitFor(t, "stalled pair", func() bool { return r.Stats().Accepted == 3 })
	r.Blackhole(false)
	r.SetDelay(time.Hour)
	u := dialUDP(t, r.UDPAddr())
	u.Write([]byte("held"))
	waitFor(t, "UDP flow", func() bool { return r.Stats().UDPFlows == 1 })

	done := make(chan struct{})
	go func() {
		r.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(patience):
		t.Fatal("Close hangs")
	}
	for _, c := range []net.Conn{active, cut, stalled} {
		readErr(t, c)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	r.Cut()
	r.Reset()
	r.Blackhole(true)
	if _, err := net.Dial("tcp", r.Addr().String()); err == nil {
		t.Fatal("relay still accepts after Close")
	}
	// goleak in TestMain checks that no goroutine is left.
}

// dialReset dials addr and returns the error that ends the connection: the
// relay's RST can fail the connect itself or the first read.
func dialReset(t *testing.T, addr net.Addr) error {
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		return err
	}
	defer c.Close()
	return readErr(t, c)
}

// tcpEcho serves TCP echo on loopback until the test ends.
func tcpEcho(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}

// TestFaultStorm runs clients that keep reconnecting through a relay while
// every fault fires at random, then checks that the relay stays usable and
// that Close stops everything (goleak checks the rest).
func TestFaultStorm(t *testing.T) {
	r := newRelay(t, tcpEcho(t), &Config{CutLinger: 50 * time.Millisecond})
	var stop atomic.Bool
	var wg sync.WaitGroup
	var echoed atomic.Int64
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			buf := make([]byte, 256<<10)
			for !stop.Load() {
				c, err := net.Dial("tcp", r.Addr().String())
				if err != nil {
					continue
				}
				for !stop.Load() {
					n := 1 + rng.IntN(len(buf))
					c.SetDeadline(time.Now().Add(time.Second))
					if _, err := c.Write(buf[:n]); err != nil {
						break
					}
					if _, err := io.ReadFull(c, buf[:n]); err != nil {
						break
					}
					echoed.Add(int64(n))
				}
				c.Close()
			}
		}()
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		switch rng.IntN(8) {
		case 0:
			r.Cut()
		case 1:
			r.Reset()
		case 2:
			r.Blackhole(rng.IntN(2) == 0)
		case 3:
			r.SetDelay(time.Duration(rng.IntN(3)) * time.Millisecond)
		case 4:
			r.Refuse(rng.IntN(2) == 0)
		case 5:
			r.BlockUDP(rng.IntN(2) == 0)
		}
		time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
	}
	r.Blackhole(false)
	r.Refuse(false)
	r.SetDelay(0)
	before := echoed.Load()
	waitFor(t, "echo traffic after the storm", func() bool { return echoed.Load() > before+1<<20 })
	stop.Store(true)
	wg.Wait()
	waitFor(t, "pairs to close", func() bool { return r.Pairs() == 0 })
	t.Logf("stats after the storm: %+v", r.Stats())
	r.Close()
}
