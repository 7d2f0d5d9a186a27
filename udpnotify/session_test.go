package udpnotify

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/tcprocks"
)

// TestSession: the first path is validated before the sender uses it, datagrams flow both
// ways through the PacketConns, and both sides see their events in order and with content.
func TestSession(t *testing.T) {
	srec, crec := newRecorder(), newRecorder()
	cudp := udpOn(t, "udp4", "127.0.0.1:0")
	caddr := cudp.LocalAddr().String()
	srv, cli := pair(t, "127.0.0.1", nil, cudp, &Config{Handler: srec}, &Config{Handler: crec})

	moved, _ := srec.wait(t, callbacks.PeerMoved, 0)
	if moved.From != nil || moved.To.String() != caddr || moved.ID != srv.Rock().ID() {
		t.Fatalf("first PeerMoved: %+v, want nil -> %s", moved, caddr)
	}
	val, _ := crec.wait(t, callbacks.PathValidated, 0)
	if val.From != nil || val.To.String() != caddr {
		t.Fatalf("PathValidated: %+v, want nil -> %s", val, caddr)
	}
	if srv.Peer().String() != caddr || cli.Peer().(*net.UDPAddr).Port != srv.LocalAddr().(*net.UDPAddr).Port {
		t.Fatalf("peers: %v, %v", srv.Peer(), cli.Peer())
	}

	spc, cpc := srv.PacketConn(), cli.PacketConn()
	if _, err := spc.WriteTo([]byte("media"), &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 9}); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 100)
	cpc.SetReadDeadline(time.Now().Add(waitFor))
	n, info, err := cpc.ReadDatagram(b)
	if err != nil || string(b[:n]) != "media" {
		t.Fatalf("receiver read %q, %v", b[:n], err)
	}
	if info.From.String() != cli.Peer().String() || info.Dst != netip.MustParseAddr("127.0.0.1") || info.IfIndex == 0 {
		t.Fatalf("receiver info %+v", info)
	}
	if _, err := cpc.Write([]byte("feedback")); err != nil {
		t.Fatal(err)
	}
	spc.SetReadDeadline(time.Now().Add(waitFor))
	n, from, err := spc.ReadFrom(b)
	if err != nil || string(b[:n]) != "feedback" || from.String() != caddr {
		t.Fatalf("sender read %q from %v, %v", b[:n], from, err)
	}

	// The receiver closes: both sides end, gracefully, with Closed as the last event.
	cli.Close()
	select {
	case <-srv.Done():
	case <-time.After(waitFor):
		t.Fatal("the sending side did not end after the receiver closed")
	}
	if err := srv.Err(); err != nil {
		t.Fatalf("sender's cause: %v", err)
	}
	for name, r := range map[string]*recorder{"sender": srec, "receiver": crec} {
		es := r.all()
		if last := es[len(es)-1]; last.Kind != callbacks.Closed || last.Cause != nil {
			t.Fatalf("%s's last event: %+v (all: %v)", name, last, kinds(es))
		}
	}
	if _, err := spc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if _, _, err := spc.ReadFrom(b); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
}

// TestSuspendResume: when the rock suspends, the session reports the peer unreachable, then
// back, in that order; the receiver re-announces itself and the path stays the same.
func TestSuspendResume(t *testing.T) {
	srec, crec := newRecorder(), newRecorder()
	srv, cli := pair(t, "127.0.0.1", nil, nil, &Config{Handler: srec, NoMonitor: true}, &Config{Handler: crec})
	srec.wait(t, callbacks.PeerMoved, 0)
	_, i := crec.wait(t, callbacks.PathValidated, 0)

	cli.Rock().Suspend()
	_, si := crec.wait(t, callbacks.Suspended, i)
	res, ri := crec.wait(t, callbacks.Resumed, si)
	if res.Remote == nil || res.Local == nil {
		t.Fatalf("Resumed without addresses: %+v", res)
	}
	// The re-announcement after the resumption reaches the sender (a keepalive burst and an
	// Addr message) without moving the peer.
	before := srv.Stats().KeepalivesReceived
	eventually(t, "keepalives after the resumption", func() bool { return srv.Stats().KeepalivesReceived > before })
	for _, e := range srec.all() {
		if e.Kind == callbacks.PeerMoved && e.From != nil {
			t.Fatalf("the peer moved without moving: %+v", e)
		}
	}
	if cli.Stats().Moves != 0 || srv.Stats().Moves != 0 {
		t.Fatalf("moves: %d, %d", cli.Stats().Moves, srv.Stats().Moves)
	}
	_ = ri
}

// TestSpoofedDatagrams: datagrams from a third address that carry the session's ID (someone
// who saw a keepalive) start a validation that fails; the stream never leaves the receiver.
func TestSpoofedDatagrams(t *testing.T) {
	srec := newRecorder()
	cudp := udpOn(t, "udp4", "127.0.0.1:0")
	caddr := cudp.LocalAddr().String()
	srv, _ := pair(t, "127.0.0.1", nil, cudp, &Config{Handler: srec, ValidationTimeout: 300 * time.Millisecond, NoMonitor: true}, &Config{NoMonitor: true})
	srec.wait(t, callbacks.PeerMoved, 0)

	attacker := udpOn(t, "udp4", "127.0.0.3:0")
	to := srv.LocalAddr().(*net.UDPAddr)
	to = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: to.Port}
	ka := AppendDatagram(nil, Datagram{Type: DgKeepalive, SessionID: srv.ID()})
	wrongID := AppendDatagram(nil, Datagram{Type: DgKeepalive, SessionID: [16]byte{1}})
	badEcho := AppendDatagram(nil, Datagram{Type: DgEcho, SessionID: srv.ID(), Nonce: [8]byte{1}, Token: [16]byte{2}})

	got := make(chan []byte, 64)
	go func() {
		b := make([]byte, 2048)
		for {
			n, _, err := attacker.ReadFrom(b)
			if err != nil {
				close(got)
				return
			}
			got <- append([]byte(nil), b[:n]...)
		}
	}()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the media keeps flowing meanwhile
		pc := srv.PacketConn()
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				pc.Write([]byte("media"))
			}
		}
	}()
	for range 3 {
		attacker.WriteTo(ka, to)
		attacker.WriteTo(wrongID, to)
		attacker.WriteTo(badEcho, to)
	}
	eventually(t, "a failed validation", func() bool { return srv.Stats().ValidationsFailed >= 1 })
	st := srv.Stats()
	if srv.Peer().String() != caddr {
		t.Fatalf("the stream moved to %v", srv.Peer())
	}
	if st.BadDatagrams < 3 {
		t.Fatalf("bad datagrams %d, want >= 3", st.BadDatagrams)
	}
	for _, e := range srec.all() {
		if e.Kind == callbacks.PeerMoved && e.From != nil {
			t.Fatalf("moved: %+v", e)
		}
	}
	attacker.Close()
	probes := 0
	for b := range got {
		if !IsControl(b) {
			t.Fatalf("the attacker received media: %q", b)
		}
		probes++
	}
	t.Logf("stats %+v; the attacker's address got %d probes", st, probes)
}

// TestVictimAddress: a session that announces someone else's address (to aim the stream at a
// victim) never gets a stream: the victim receives a few probes, never media, and the
// validation fails.
func TestVictimAddress(t *testing.T) {
	victim := udpOn(t, "udp4", "127.0.0.5:0")
	l := listen(t, "127.0.0.1")
	srec := newRecorder()
	ch := accept(t, l, nil, &Config{Handler: srec, ValidationTimeout: 300 * time.Millisecond, NoMonitor: true})

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	rc := clientRockConfig(t)
	rc.RequireEnhanced = true
	rock, err := tcprocks.Dial(ctx, "tcp", l.Addr().String(), rc)
	if err != nil {
		t.Fatal(err)
	}
	defer rock.Close()
	liar := udpOn(t, "udp4", "127.0.0.1:0")
	va := netip.MustParseAddrPort(victim.LocalAddr().String())
	rock.Write(AppendMessage(nil, Message{Type: MsgHello, Version: Version, Addrs: []netip.AddrPort{va}}))
	rd := &msgReader{r: rock}
	w, err := rd.next()
	if err != nil || w.Type != MsgWelcome {
		t.Fatalf("welcome: %+v %v", w, err)
	}
	srv := <-ch
	if srv == nil {
		t.Fatal("no sending side")
	}
	defer srv.Close()
	c, err := rd.next()
	if err != nil || c.Type != MsgChallenge || c.Addr != va {
		t.Fatalf("challenge: %+v %v", c, err)
	}
	// The liar echoes the token from its own address and makes up the probe's.
	sendTo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(w.Port)}
	liar.WriteTo(AppendDatagram(nil, Datagram{Type: DgEcho, SessionID: w.SessionID, Nonce: c.Nonce, Token: c.Token}), sendTo)
	rock.Write(AppendMessage(nil, Message{Type: MsgProbeAck, Nonce: c.Nonce, Token: c.Token}))

	pc := srv.PacketConn()
	eventually(t, "the validation fails", func() bool {
		if _, err := pc.Write([]byte("media")); !errors.Is(err, ErrNoPath) {
			t.Fatalf("a write went somewhere: %v", err)
		}
		return srv.Stats().ValidationsFailed >= 1
	})
	st := srv.Stats()
	if st.EchoMismatches < 1 || st.Validated != 0 || srv.Peer() != nil {
		t.Fatalf("stats %+v, peer %v", st, srv.Peer())
	}
	victim.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	probes := 0
	b := make([]byte, 2048)
	for {
		n, _, err := victim.ReadFrom(b)
		if err != nil {
			break
		}
		if !IsControl(b[:n]) || len(b[:n]) > 64 {
			t.Fatalf("the victim received %d bytes of non-probe: %x", n, b[:n])
		}
		probes++
	}
	if probes > 8 {
		t.Fatalf("the victim received %d probes", probes)
	}
	t.Logf("stats %+v; the victim got %d probes of 45 bytes", st, probes)
}

// TestSourceAddress: on a host with two addresses (127.0.0.1 and 127.0.0.2 on lo), the
// sending side answers from the address the receiver wrote to, although the kernel's
// choice for the receiver's address would be the other one.
func TestSourceAddress(t *testing.T) {
	// The premise: from a wildcard socket to 127.0.0.1 the kernel picks 127.0.0.1.
	probe, wild := udpOn(t, "udp4", "127.0.0.1:0"), udpOn(t, "udp4", "0.0.0.0:0")
	wild.WriteTo([]byte("x"), probe.LocalAddr())
	probe.SetReadDeadline(time.Now().Add(waitFor))
	b := make([]byte, 100)
	_, kernelSrc, err := probe.ReadFromUDP(b)
	if err != nil || !kernelSrc.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("kernel's source %v, %v", kernelSrc, err)
	}

	sudp := udpOn(t, "udp4", "0.0.0.0:0")
	cudp := udpOn(t, "udp4", "127.0.0.1:0")
	srec := newRecorder()
	srv, cli := pair(t, "127.0.0.2", sudp, cudp, &Config{Handler: srec, NoMonitor: true}, &Config{NoMonitor: true})
	srec.wait(t, callbacks.PeerMoved, 0)
	want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(sudp.LocalAddr().(*net.UDPAddr).Port))
	if cli.Peer().String() != want.String() {
		t.Fatalf("receiver's peer %v, want %v", cli.Peer(), want)
	}
	// The receiver's datagrams arrive at 127.0.0.2 on lo.
	cli.PacketConn().Write([]byte("up"))
	spc := srv.PacketConn()
	spc.SetReadDeadline(time.Now().Add(waitFor))
	_, info, err := spc.ReadDatagram(b)
	lo, _ := net.InterfaceByName("lo")
	if err != nil || info.Dst != want.Addr() || lo == nil || info.IfIndex != lo.Index {
		t.Fatalf("sender's info %+v (lo %v), %v", info, lo, err)
	}
	// The answer leaves from 127.0.0.2, so the receiver accepts it.
	srv.PacketConn().Write([]byte("media"))
	cpc := cli.PacketConn()
	cpc.SetReadDeadline(time.Now().Add(waitFor))
	n, info, err := cpc.ReadDatagram(b)
	if err != nil || string(b[:n]) != "media" || info.From != want {
		t.Fatalf("receiver read %q from %v, %v", b[:n], info.From, err)
	}
	if u := cli.Stats().Unvalidated; u != 0 {
		t.Fatalf("%d datagrams came from the wrong source", u)
	}
}

// TestReadDeadline: PacketConn deadlines are net.Errors that time out, and apply to a read
// already waiting.
func TestReadDeadline(t *testing.T) {
	srv, _ := pair(t, "127.0.0.1", nil, nil, &Config{NoMonitor: true}, &Config{NoMonitor: true})
	pc := srv.PacketConn()
	pc.SetReadDeadline(time.Now().Add(-time.Second))
	_, _, err := pc.ReadFrom(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past deadline: %v", err)
	}
	pc.SetReadDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() { _, _, err := pc.ReadFrom(make([]byte, 10)); errc <- err }()
	pc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("pending read: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("the deadline did not apply to a pending read")
	}
}

// TestPlainTCP: a session needs a rock; plain TCP is refused with ErrNotEnhanced.
func TestPlainTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // a plain TCP server that keeps its connections until the test ends
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	rock, err := tcprocks.Dial(ctx, "tcp", ln.Addr().String(), clientRockConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Client(ctx, rock, nil, nil); !errors.Is(err, ErrNotEnhanced) {
		t.Fatalf("Client over plain TCP: %v", err)
	}
}

// TestFallback: when the UDP path stops working, the sending side carries its datagrams over
// the rock (tunnel data frames), and the receiver reads them from the same PacketConn.
func TestFallback(t *testing.T) {
	srec := newRecorder()
	cudp := udpOn(t, "udp4", "127.0.0.1:0")
	srv, cli := pair(t, "127.0.0.1", nil, cudp,
		&Config{Handler: srec, NoMonitor: true, Fallback: 300 * time.Millisecond, FallbackMaxAge: time.Minute},
		&Config{NoMonitor: true})
	srec.wait(t, callbacks.PeerMoved, 0)
	if srv.Fallback() {
		t.Fatal("fallback with a working path")
	}
	// UDP stops: the sending side's socket goes (as if a firewall dropped everything).
	srv.sock.c.Close()
	eventually(t, "fallback", srv.Fallback)
	pc := cli.PacketConn()
	pc.SetReadDeadline(time.Now().Add(waitFor))
	big := bytes.Repeat([]byte("m"), 1200)
	if _, err := srv.PacketConn().Write(big); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2048)
	n, info, err := pc.ReadDatagram(b)
	if err != nil || !bytes.Equal(b[:n], big) || !info.ViaRock || info.From.String() != cli.Peer().String() {
		t.Fatalf("read %d bytes via rock %v from %v: %v", n, info.ViaRock, info.From, err)
	}
	if st := srv.Stats(); st.FallbackSent != 1 {
		t.Fatalf("sender stats %+v", st)
	}
	if st := cli.Stats(); st.FallbackReceived != 1 || st.FallbackDropped != 0 {
		t.Fatalf("receiver stats %+v", st)
	}
}

// TestStaleBase: datagrams that spent longer in the rock than the fastest recent one by more
// than the max-age are recognised.
func TestStaleBase(t *testing.T) {
	var b staleBase
	now := time.Unix(1000, 0)
	sent := uint32(now.UnixMilli()) + 5000 // the sender's clock is 5 s ahead
	if e := b.extra(now.Add(10*time.Millisecond), sent); e != 0 {
		t.Fatalf("first datagram: %v", e)
	}
	if e := b.extra(now.Add(2*time.Second), sent+100); e != 1890*time.Millisecond {
		t.Fatalf("held 1.89 s longer: %v", e)
	}
	if e := b.extra(now.Add(3*time.Second), sent+2995); e != 0 {
		t.Fatalf("a faster one sets the base: %v", e)
	}
}

// TestEventsOnly: an application that only wants events never reads the PacketConn; the
// session still validates, reports, and drops (and counts) the datagrams nobody reads.
func TestEventsOnly(t *testing.T) {
	crec := newRecorder()
	srv, cli := pair(t, "127.0.0.1", nil, nil, &Config{NoMonitor: true}, &Config{Handler: crec, QueueLen: 4, NoMonitor: true})
	_, i := crec.wait(t, callbacks.PathValidated, 0)
	eventually(t, "datagrams dropped", func() bool {
		srv.PacketConn().Write([]byte("media"))
		return cli.Stats().QueueDrops >= 4
	})
	cli.Rock().Suspend()
	_, j := crec.wait(t, callbacks.Suspended, i)
	crec.wait(t, callbacks.Resumed, j)
}

// TestIPv6: the same over IPv6 loopback: destination addresses come from IPV6_PKTINFO.
func TestIPv6(t *testing.T) {
	c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no IPv6 loopback: %v", err)
		}
		t.Skipf("no IPv6 loopback: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	srec := newRecorder()
	srv, cli := pair(t, "::1", nil, c, &Config{Handler: srec, NoMonitor: true}, &Config{NoMonitor: true})
	moved, _ := srec.wait(t, callbacks.PeerMoved, 0)
	if moved.To.String() != c.LocalAddr().String() {
		t.Fatalf("PeerMoved to %v, want %v", moved.To, c.LocalAddr())
	}
	srv.PacketConn().Write([]byte("media6"))
	pc := cli.PacketConn()
	pc.SetReadDeadline(time.Now().Add(waitFor))
	b := make([]byte, 100)
	n, info, err := pc.ReadDatagram(b)
	if err != nil || string(b[:n]) != "media6" || info.Dst != netip.IPv6Loopback() || info.IfIndex == 0 {
		t.Fatalf("read %q %+v: %v", b[:n], info, err)
	}
}
