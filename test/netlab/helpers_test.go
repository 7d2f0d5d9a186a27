//go:build linux

package netlab_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rockudp/rockudp/test/netlab"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		// A helper process (see TestHelperLab): goroutines may be left on purpose.
		os.Exit(m.Run())
	}
	goleak.VerifyTestMain(m)
}

// helperEnv marks a helper process started by a test (see TestHelperLab).
const helperEnv = "NETLAB_TEST_HELPER"

// echoPort is the port of the echo servers in the lab's hosts.
const echoPort = 7

var (
	subA4 = netip.MustParsePrefix("192.0.2.0/24")
	subA6 = netip.MustParsePrefix("2001:db8:a::/64")
	subB4 = netip.MustParsePrefix("198.51.100.0/24")
	subB6 = netip.MustParsePrefix("2001:db8:b::/64")
)

// pair is the lab most tests need: hosts a and b, dual-stack, on either side
// of router r, b running TCP and UDP echo servers.
type pair struct {
	lab    *netlab.Lab
	r      *netlab.Host
	a, b   *netlab.Host
	la, lb *netlab.Link
}

func newPair(t *testing.T) *pair {
	t.Helper()
	lab := netlab.New(t)
	p := &pair{lab: lab, r: lab.Router("r"), a: lab.Host("a"), b: lab.Host("b")}
	p.la = lab.Connect(p.a, p.r, subA4, subA6)
	p.lb = lab.Connect(p.b, p.r, subB4, subB6)
	startEcho(t, p.b)
	return p
}

// addrB returns b's echo address of the family of the IPv4 (v6 false) or
// IPv6 subnet.
func (p *pair) addrB(v6 bool) string {
	return echoAddr(p.lb.Prefixes()[b2i(v6)].Addr())
}

func echoAddr(a netip.Addr) string {
	return netip.AddrPortFrom(a, echoPort).String()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// startEcho runs TCP and UDP echo servers on port echoPort in h, on all
// addresses. Each TCP connection first gets a line with the client's address
// as the server sees it, then the echo; each UDP reply is that line followed
// by the datagram.
func startEcho(t *testing.T, h *netlab.Host) {
	t.Helper()
	ln, err := h.Listen("tcp", fmt.Sprintf(":%d", echoPort))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := h.ListenPacket("udp", fmt.Sprintf(":%d", echoPort))
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				fmt.Fprintf(c, "%s\n", c.RemoteAddr())
				io.Copy(c, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte(from.String()+"\n"), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		pc.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// echoConn is a TCP connection to an echo server.
type echoConn struct {
	net.Conn
	r    *bufio.Reader
	seen netip.AddrPort // the client's address as the server saw it
}

// dialEcho connects from h to the echo server at addr.
func dialEcho(t *testing.T, h *netlab.Host, addr string, timeout time.Duration) (*echoConn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := h.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	ec := &echoConn{Conn: c, r: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(timeout))
	line, err := ec.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Time{})
	ec.seen, err = netip.ParseAddrPort(strings.TrimSpace(line))
	return ec, err
}

// echo sends msg and waits for it to come back.
func (ec *echoConn) echo(msg string, timeout time.Duration) error {
	ec.SetDeadline(time.Now().Add(timeout))
	defer ec.SetDeadline(time.Time{})
	if _, err := io.WriteString(ec, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(ec.r, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo: got %q, want %q", buf, msg)
	}
	return nil
}

// tcpEcho dials addr from h and echoes a message: nil if the path works.
func tcpEcho(t *testing.T, h *netlab.Host, addr string, timeout time.Duration) (seen netip.AddrPort, err error) {
	t.Helper()
	ec, err := dialEcho(t, h, addr, timeout)
	if err != nil {
		return seen, err
	}
	defer ec.Close()
	return ec.seen, ec.echo("hello "+addr, timeout)
}

// udpSocket is a UDP socket in a host, for talking to an echo server.
type udpSocket struct {
	net.PacketConn
}

func newUDP(t *testing.T, h *netlab.Host, network string) *udpSocket {
	t.Helper()
	pc, err := h.ListenPacket(network, ":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return &udpSocket{pc}
}

// ask sends msg to the echo server at addr and waits for its answer, ignoring
// stale answers; it returns how the server saw us and the round-trip time.
func (u *udpSocket) ask(addr string, msg string, timeout time.Duration) (seen netip.AddrPort, rtt time.Duration, err error) {
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return seen, 0, err
	}
	start := time.Now()
	u.SetReadDeadline(start.Add(timeout))
	if _, err := u.WriteTo([]byte(msg), to); err != nil {
		return seen, 0, err
	}
	buf := make([]byte, 64<<10)
	for {
		n, _, err := u.ReadFrom(buf)
		if err != nil {
			return seen, 0, err
		}
		line, payload, _ := strings.Cut(string(buf[:n]), "\n")
		if payload != msg {
			continue
		}
		seen, err := netip.ParseAddrPort(line)
		return seen, time.Since(start), err
	}
}

// udpEcho makes one UDP round trip from a fresh socket in h to addr.
func udpEcho(t *testing.T, h *netlab.Host, addr string, timeout time.Duration) (netip.AddrPort, error) {
	t.Helper()
	seen, _, err := newUDP(t, h, "udp").ask(addr, "ping "+addr, timeout)
	return seen, err
}

// isTimeout reports whether err is a timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// eventually retries f until it returns nil or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
