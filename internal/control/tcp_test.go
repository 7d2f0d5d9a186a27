package control

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/rockudp/rockudp/edp"
)

// tcpServer serves s's TCP fallback on a loopback EDP listener and returns its address.
func tcpServer(t testing.TB, s *Server) string {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	el := edp.NewListener(inner, &edp.Config{Enhancements: []edp.Enhancement{s.TCPEnhancement()}, FirstByteWait: 2 * time.Second})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			ec, err := el.AcceptConn()
			if err != nil {
				return
			}
			wg.Go(func() {
				if !s.ServeTCP(ec) {
					ec.Close()
				}
			})
		}
	})
	t.Cleanup(func() { el.Close(); wg.Wait() })
	return inner.Addr().String()
}

// tcpPair dials and accepts one verified channel over TCP.
func tcpPair(t testing.TB, s *Server, c *Client, addr string) (client, server *Channel) {
	t.Helper()
	ctx := ctxT(t)
	acc := make(chan *Channel, 1)
	go func() {
		ch, _ := s.Accept(ctx)
		acc <- ch
	}()
	cch, err := c.DialTCP(ctx, nil, "tcp", addr, testID, testKey)
	if err != nil {
		t.Fatalf("dial tcp: %v", err)
	}
	sch := <-acc
	if sch == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { cch.Close(); sch.Close() })
	return cch, sch
}

func TestTCPChannel(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := tcpPair(t, s, c, tcpServer(t, s))
	if cch.Network() != "tcp" || sch.Network() != "tcp" || sch.ID() != testID {
		t.Fatalf("networks %s/%s, id %x", cch.Network(), sch.Network(), sch.ID())
	}
	cr, sr := newRecorder(), newRecorder()
	cr.consumed.Store(111)
	sr.consumed.Store(222)
	cch.Start(cr.heartbeat(20*time.Millisecond, 50))
	sch.Start(sr.heartbeat(20*time.Millisecond, 50))
	cr.until(t, "server's count at client", func(r *recorder) bool { return r.peer == 222 })
	sr.until(t, "client's count at server", func(r *recorder) bool { return r.peer == 111 })
	if err := cch.Ack(1 << 40); err != nil {
		t.Fatal(err)
	}
	sr.until(t, "ack", func(r *recorder) bool { return r.peer == 1<<40 })

	ctx := ctxT(t)
	big := make([]byte, MaxMessageLen)
	big[len(big)-1] = 7
	for _, m := range [][]byte{[]byte("ping"), {}, big} {
		if err := cch.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	sr.until(t, "messages", func(r *recorder) bool { return len(r.msgs) == 3 })
	if string(sr.msgs[0]) != "ping" || len(sr.msgs[1]) != 0 || len(sr.msgs[2]) != MaxMessageLen || sr.msgs[2][MaxMessageLen-1] != 7 {
		t.Fatalf("messages garbled")
	}
	if err := sch.Send(ctx, []byte("pong")); err != nil {
		t.Fatal(err)
	}
	cr.until(t, "reply", func(r *recorder) bool { return len(r.msgs) == 1 && string(r.msgs[0]) == "pong" })

	// Closing one end is seen by the other as a close by the peer, not as a loss.
	cch.Close()
	if err := sr.waitDead(t); !errors.Is(err, ErrPeerClosed) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("OnDead: %v, want ErrPeerClosed", err)
	}
}

func TestTCPRefused(t *testing.T) {
	other := ID{9}
	s := newServer(t, &ServerConfig{Key: keys(map[ID][]byte{testID: testKey, other: []byte("another key")})})
	c := newClient(t)
	addr := tcpServer(t, s)
	for _, tc := range []struct {
		name string
		id   ID
		key  []byte
	}{
		{"unknown id", ID{7}, testKey},
		{"wrong key", testID, []byte("not the key")},
		{"key of another rock", other, testKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.DialTCP(ctxT(t), nil, "tcp", addr, tc.id, tc.key)
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("DialTCP: %v, want ErrRefused", err)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if ch, err := s.Accept(ctx); err == nil {
		t.Fatalf("a refused client got channel %x", ch.ID())
	}
}

// rawDial runs the client side of rockctl/1 by hand: hello with nonce nc, then proof
// (computed by proofFor from the server's nonce) and returns the connection and the
// server's verdict (its proof, or an error).
func rawTCPDial(t *testing.T, addr string, nc [NonceLen]byte, proofFor func(ns [NonceLen]byte) []byte) (ns [NonceLen]byte, err error) {
	t.Helper()
	hello := AppendTCPHello(nil, testID, nc)
	cfg := &edp.Config{Enhancements: []edp.Enhancement{{
		Name: TCPEnhancementName, Version: TCPEnhancementVersion,
		Hello: func(edp.Role, []byte) ([]byte, any, error) { return hello, nil, nil },
		Init: func(ctx context.Context, conn net.Conn, a *edp.Agreed) (net.Conn, error) {
			var err error
			if ns, err = ParseTCPChallenge(a.Peer); err != nil {
				return nil, err
			}
			conn.SetDeadline(time.Now().Add(wait))
			if _, err := conn.Write(proofFor(ns)); err != nil {
				return nil, err
			}
			var buf [TCPProofLen]byte
			if _, err := conn.Read(buf[:]); err != nil {
				return nil, err
			}
			return conn, nil
		},
	}}}
	ec, err := edp.Dial(ctxT(t), "tcp", addr, cfg)
	if err == nil {
		ec.Close()
	}
	return ns, err
}

func TestTCPReplayedProofRefused(t *testing.T) {
	s := newServer(t, nil)
	addr := tcpServer(t, s)
	nc := [NonceLen]byte{1, 2, 3}
	var recorded []byte
	ns, err := rawTCPDial(t, addr, nc, func(ns [NonceLen]byte) []byte {
		b := &tcpBinding{key: testKey, id: testID, nc: nc, ns: ns}
		recorded = AppendServerProof(nil, b.mac(labelTCPClient))
		return recorded
	})
	if err != nil {
		t.Fatalf("honest client: %v", err)
	}
	ch, err := s.Accept(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	ch.Close()
	// The same hello and the recorded proof on a new connection: the server's nonce is new.
	ns2, err := rawTCPDial(t, addr, nc, func([NonceLen]byte) []byte { return recorded })
	if err == nil {
		t.Fatal("replayed proof accepted")
	}
	if ns2 == ns {
		t.Fatal("server reused its nonce")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if ch, err := s.Accept(ctx); err == nil {
		t.Fatalf("replay got channel %x", ch.ID())
	}
}

func TestTCPBadServerProof(t *testing.T) {
	// A server that knows the ID but not the key: it skips the client's proof and answers
	// with a proof of its own making.
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fake := edp.Enhancement{
		Name: TCPEnhancementName, Version: TCPEnhancementVersion,
		Hello: func(edp.Role, []byte) ([]byte, any, error) {
			return AppendTCPChallenge(nil, [NonceLen]byte{5}), nil, nil
		},
		Init: func(ctx context.Context, conn net.Conn, a *edp.Agreed) (net.Conn, error) {
			var buf [TCPProofLen]byte
			if _, err := conn.Read(buf[:]); err != nil {
				return nil, err
			}
			_, err := conn.Write(AppendServerProof(nil, [MACLen]byte{1}))
			return conn, err
		},
	}
	el := edp.NewListener(inner, &edp.Config{Enhancements: []edp.Enhancement{fake}, FirstByteWait: 2 * time.Second})
	defer el.Close()
	go func() {
		for {
			ec, err := el.AcceptConn()
			if err != nil {
				return
			}
			defer ec.Close()
		}
	}()
	c := newClient(t)
	if _, err := c.DialTCP(ctxT(t), nil, "tcp", inner.Addr().String(), testID, testKey); !errors.Is(err, ErrBadProof) {
		t.Fatalf("DialTCP: %v, want ErrBadProof", err)
	}
}

func TestTCPPeerSilent(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := tcpPair(t, s, c, tcpServer(t, s))
	_ = cch // never started: no heartbeats, but the TCP connection lives
	sr := newRecorder()
	sch.Start(sr.heartbeat(30*time.Millisecond, 3))
	err := sr.waitDead(t)
	var hto *HeartbeatTimeoutError
	if !errors.As(err, &hto) || hto.Misses != 3 {
		t.Fatalf("OnDead: %v", err)
	}
}

func TestTCPTamperedFrame(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := tcpPair(t, s, c, tcpServer(t, s))
	sr := newRecorder()
	sch.Start(sr.heartbeat(time.Second, 1000))
	cch.Start(newRecorder().heartbeat(time.Second, 1000)) // its reader sees the close frame
	// A frame with a wrong tag, as an on-path attacker would inject.
	raw := cch.conn.(*tcpLink).conn
	b := AppendFrameHeader(nil, FrameMessage, 3)
	b = append(append(b, "FIN"...), make([]byte, FrameTagLen)...)
	if _, err := raw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := sr.waitDead(t); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("OnDead: %v, want ErrBadFrame", err)
	}
	if len(sr.msgs) != 0 {
		t.Fatalf("tampered message delivered: %q", sr.msgs)
	}
	// The client learns why.
	<-cch.conn.Context().Done()
	var ae *quic.ApplicationError
	if err := context.Cause(cch.conn.Context()); !errors.As(err, &ae) || ae.ErrorCode != codeProtocol || !ae.Remote {
		t.Fatalf("client link closed with %v", err)
	}
}

func TestTCPPeerLost(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := tcpPair(t, s, c, tcpServer(t, s))
	sr := newRecorder()
	sch.Start(sr.heartbeat(time.Second, 1000))
	cch.conn.(*tcpLink).conn.Close() // no close frame: the process died
	err := sr.waitDead(t)
	if errors.Is(err, ErrPeerClosed) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("OnDead: %v, want a lost connection", err)
	}
}

// TestServerRestart: a server process that dies without a word and comes back on the same
// port: the client's channels on the dead session die by silence, and new channels get a
// new session at once.
func TestServerRestart(t *testing.T) {
	s1, c := newServer(t, nil), newClient(t)
	cch, _ := pair(t, s1, c)
	cr := newRecorder()
	cch.Start(cr.heartbeat(50*time.Millisecond, 3))
	addr := s1.Addr().(*net.UDPAddr)
	s1.tr.Close() // no CONNECTION_CLOSE: the peer only sees silence
	var hto *HeartbeatTimeoutError
	if err := cr.waitDead(t); !errors.As(err, &hto) {
		t.Fatalf("OnDead: %v, want a heartbeat timeout", err)
	}
	s1.Close()
	pc, err := net.ListenUDP("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Listen(pc, &ServerConfig{Key: keys(map[ID][]byte{testID: testKey})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	accepted := make(chan *Channel, 1)
	go func() {
		ch, _ := s2.Accept(ctx)
		accepted <- ch
	}()
	ch, err := c.Dial(ctx, addr, testID, testKey)
	if err != nil {
		t.Fatalf("dial after the restart: %v", err)
	}
	ch.Close()
	if sch := <-accepted; sch != nil {
		sch.Close()
	}
}
