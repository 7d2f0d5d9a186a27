package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/rockudp/rockudp/internal/testport"
)

// The benchmarks compare, side by side on loopback, a UDP echo service
// reached directly, through this package over a rock (what `rockudp
// tunnel` runs), through this package over plain TCP, and through Debian's
// udptunnel (1.1). Every variant uses the same echo service and the same
// load generator:
//
//	go test -run '^$' -bench 'Tunnel' -benchtime 2s ./tunnel/
//
// "rate32" keeps 32 datagrams in flight (an echo frees a slot) and reports
// datagrams per second; "rate1" does the same with one datagram in flight;
// "rtt" reports the round-trip time of one datagram at a time (ns/op).
//
// udptunnel forwards at most one datagram per read(2) of its TCP socket and
// keeps the rest in its buffer until more bytes arrive, so with several
// datagrams in flight some are held back (the generator counts a window as
// lost after 200 ms and refills it); one in flight is its best case.

// benchPath is one way to reach the echo service.
type benchPath struct {
	to  *net.UDPAddr // where the generator sends
	gen *net.UDPConn // the generator's socket
}

var benchSizes = []int{64, 512, 1400}

func BenchmarkTunnel(b *testing.B) {
	for _, size := range benchSizes {
		for _, mode := range []string{"rate32", "rate1", "rtt"} {
			for _, variant := range []string{"direct", "rockudp", "tunnel-tcp", "udptunnel"} {
				b.Run(fmt.Sprintf("%dB/%s/%s", size, mode, variant), func(b *testing.B) {
					p := benchSetup(b, variant)
					buf := make([]byte, size)
					switch mode {
					case "rtt":
						benchRTT(b, p, buf)
					case "rate1":
						benchRate(b, p, buf, 1)
					default:
						benchRate(b, p, buf, 32)
					}
				})
			}
		}
	}
}

// benchSetup starts variant's path to a fresh echo service.
func benchSetup(tb testing.TB, variant string) benchPath {
	tb.Helper()
	switch variant {
	case "direct":
		echo := benchEcho(tb, "127.0.0.1:0")
		return benchPath{to: echo, gen: benchGen(tb, "127.0.0.1:0")}
	case "rockudp", "tunnel-tcp":
		echo := benchEcho(tb, "127.0.0.1:0")
		tr := overRock
		if variant == "tunnel-tcp" {
			tr = overTCP
		}
		r := &rig{clog: &logBuffer{}, slog: &logBuffer{}}
		a, bb := transportPair(tb, tr, r)
		uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			tb.Fatal(err)
		}
		if r.cli, err = NewClient(a, uc, nil); err != nil {
			tb.Fatal(err)
		}
		if r.srv, err = NewServerAddr(bb, echo, nil); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { r.close(tb) })
		p := benchPath{to: uc.LocalAddr().(*net.UDPAddr), gen: benchGen(tb, "127.0.0.1:0")}
		benchReady(tb, p)
		return p
	case "udptunnel":
		return udptunnelSetup(tb)
	}
	tb.Fatalf("unknown variant %q", variant)
	return benchPath{}
}

// udptunnelSetup runs `udptunnel -s` and `udptunnel -c`. udptunnel binds
// its UDP port on 0.0.0.0 (with SO_REUSEADDR) and sends decapsulated
// datagrams to the same port at the address it is given, so each of its
// UDP peers binds that port on a loopback address of its own: the echo
// service on 127.0.0.2, the generator on 127.0.0.3. It carries one flow
// and no request/response addressing (see its manual), so the echo
// replies to the server's port rather than to the datagram's source.
func udptunnelSetup(tb testing.TB) benchPath {
	tb.Helper()
	bin, err := exec.LookPath("udptunnel")
	if err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatal("udptunnel is not installed (Debian package udptunnel)")
		}
		tb.Skip("udptunnel is not installed (apt-get install udptunnel); skipping its side of the comparison")
	}
	tcpPort, srvPort, cliPort := freePort(tb), freePort(tb), freePort(tb)
	// udptunnel sends from an ephemeral socket but reads only its bound
	// port: like an RTP peer, the echo replies to that port.
	echo := benchEcho(tb, net.JoinHostPort("127.0.0.2", strconv.Itoa(srvPort)),
		&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: srvPort})
	gen := benchGen(tb, net.JoinHostPort("127.0.0.3", strconv.Itoa(cliPort)))
	start := func(args ...string) (exited chan struct{}, stop func()) {
		cmd := exec.Command(bin, args...)
		if err := cmd.Start(); err != nil {
			tb.Fatal(err)
		}
		exited = make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		return exited, func() { _ = cmd.Process.Kill(); <-exited }
	}
	_, stop := start("-s", strconv.Itoa(tcpPort), fmt.Sprintf("%s/%d", echo.IP, srvPort))
	tb.Cleanup(stop)
	// udptunnel -s serves exactly one TCP connection, so it cannot be probed:
	// start the client until it stays up (it exits when the connect fails).
	deadline := time.Now().Add(10 * time.Second)
	for {
		exited, stop := start("-c", fmt.Sprintf("127.0.0.1/%d", tcpPort), fmt.Sprintf("%s/%d", gen.LocalAddr().(*net.UDPAddr).IP, cliPort))
		select {
		case <-exited:
			if time.Now().After(deadline) {
				tb.Fatal("udptunnel -c could not connect to udptunnel -s")
			}
			time.Sleep(20 * time.Millisecond)
			continue
		case <-time.After(300 * time.Millisecond):
		}
		tb.Cleanup(stop)
		break
	}
	p := benchPath{to: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: cliPort}, gen: gen}
	benchReady(tb, p)
	return p
}

// freePort returns a port of 127.0.0.1 free for both TCP and UDP a moment ago.
func freePort(tb testing.TB) int {
	tb.Helper()
	return testport.Free(tb)
}

// reuseAddr sets SO_REUSEADDR, so a socket can share its port with
// udptunnel's 0.0.0.0 socket.
var reuseAddr = net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	})
	return errors.Join(err, serr)
}}

func listenReuse(tb testing.TB, addr string) *net.UDPConn {
	tb.Helper()
	pc, err := reuseAddr.ListenPacket(context.Background(), "udp4", addr)
	if err != nil {
		tb.Fatal(err)
	}
	c := pc.(*net.UDPConn)
	_ = c.SetReadBuffer(4 << 20)
	_ = c.SetWriteBuffer(4 << 20)
	return c
}

// benchEcho starts a batched echo service on addr. It replies to the
// sender, or to replyTo if one is given.
func benchEcho(tb testing.TB, addr string, replyTo ...*net.UDPAddr) *net.UDPAddr {
	tb.Helper()
	c := listenReuse(tb, addr)
	pc := ipv4.NewPacketConn(c)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rb := newReadBatch(64, false)
		for {
			n, err := pc.ReadBatch(rb.ms, 0)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			for i := range rb.ms[:n] {
				rb.ms[i].Buffers[0] = rb.ms[i].Buffers[0][:rb.ms[i].N]
				if len(replyTo) > 0 {
					rb.ms[i].Addr = replyTo[0]
				}
			}
			out := rb.ms[:n]
			for len(out) > 0 {
				k, err := pc.WriteBatch(out, 0)
				if err != nil {
					k++
				}
				out = out[k:]
			}
			for i := range rb.ms[:n] {
				rb.ms[i].Buffers[0] = rb.ms[i].Buffers[0][:readSlot]
			}
		}
	}()
	tb.Cleanup(func() { c.Close(); wg.Wait() })
	return c.LocalAddr().(*net.UDPAddr)
}

func benchGen(tb testing.TB, addr string) *net.UDPConn {
	tb.Helper()
	c := listenReuse(tb, addr)
	tb.Cleanup(func() { c.Close() })
	return c
}

// benchReady waits until an echo comes back through p.
func benchReady(tb testing.TB, p benchPath) {
	tb.Helper()
	buf := make([]byte, 64)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := p.gen.WriteToUDP([]byte("ready?"), p.to); err != nil {
			tb.Fatal(err)
		}
		_ = p.gen.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := p.gen.Read(buf); err == nil {
			// Drain late duplicates of the probe.
			for {
				_ = p.gen.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				if _, err := p.gen.Read(buf); err != nil {
					return
				}
			}
		}
	}
	tb.Fatal("the path never echoed")
}

func benchRTT(b *testing.B, p benchPath, msg []byte) {
	buf := make([]byte, 65536)
	lost := 0
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for range b.N {
		for {
			if _, err := p.gen.WriteToUDP(msg, p.to); err != nil {
				b.Fatal(err)
			}
			_ = p.gen.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := p.gen.Read(buf); err == nil {
				break
			}
			lost++
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/rtt")
	b.ReportMetric(float64(lost), "lost")
}

func benchRate(b *testing.B, p benchPath, msg []byte, window int) {
	buf := make([]byte, 65536)
	sent, got, inFlight, lost := 0, 0, 0, 0
	lastEcho := time.Now()
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for got < b.N {
		if time.Since(lastEcho) > 10*time.Second {
			b.Fatalf("no echo for 10s (%d of %d back)", got, b.N)
		}
		for inFlight < window && sent < b.N+lost {
			if _, err := p.gen.WriteToUDP(msg, p.to); err != nil {
				b.Fatal(err)
			}
			sent++
			inFlight++
		}
		_ = p.gen.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := p.gen.Read(buf); err != nil {
			lost += inFlight // declare the window lost and refill it
			inFlight = 0
			continue
		}
		got++
		inFlight = max(inFlight-1, 0)
		lastEcho = time.Now()
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "dgrams/s")
	b.ReportMetric(float64(lost), "lost")
	// Late echoes of a "lost" window must not count in the next run.
	for {
		_ = p.gen.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := p.gen.Read(buf); err != nil {
			break
		}
	}
}

// TestBenchmarkPaths checks that every benchmark path echoes, so the
// benchmark cannot rot. It needs udptunnel (Debian package udptunnel): it
// is skipped without it, and fails without it when CI=true.
func TestBenchmarkPaths(t *testing.T) {
	for _, v := range []string{"direct", "rockudp", "tunnel-tcp", "udptunnel"} {
		t.Run(v, func(t *testing.T) {
			p := benchSetup(t, v)
			for _, size := range benchSizes {
				msg := make([]byte, size)
				msg[0] = byte(size)
				if _, err := p.gen.WriteToUDP(msg, p.to); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 2048)
				_ = p.gen.SetReadDeadline(time.Now().Add(20 * time.Second))
				n, err := p.gen.Read(buf)
				if err != nil || n != size || buf[0] != byte(size) {
					t.Fatalf("%d-byte echo: got %d bytes, %v", size, n, err)
				}
			}
		})
	}
}
