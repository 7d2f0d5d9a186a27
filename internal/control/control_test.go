package control

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/rockudp/rockudp/internal/testwait"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// wait is generous: the box is shared and tests run under -race.
const wait = 20 * time.Second

var (
	testID  = ID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	testKey = []byte("0123456789abcdef0123456789abcdef")
)

func keys(m map[ID][]byte) func(ID) ([]byte, bool) {
	return func(id ID) ([]byte, bool) {
		k, ok := m[id]
		return k, ok
	}
}

func newServer(t testing.TB, cfg *ServerConfig) *Server {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if cfg == nil {
		cfg = &ServerConfig{}
	}
	if cfg.Key == nil {
		cfg.Key = keys(map[ID][]byte{testID: testKey})
	}
	s, err := Listen(pc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newClient(t testing.TB) *Client {
	t.Helper()
	c, err := NewClient(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// pair dials and accepts one verified channel.
func pair(t testing.TB, s *Server, c *Client) (client, server *Channel) {
	t.Helper()
	ctx := ctxT(t)
	type res struct {
		ch  *Channel
		err error
	}
	acc := make(chan res, 1)
	go func() {
		ch, err := s.Accept(ctx)
		acc <- res{ch, err}
	}()
	cch, err := c.Dial(ctx, s.Addr(), testID, testKey)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	r := <-acc
	if r.err != nil {
		t.Fatalf("accept: %v", r.err)
	}
	t.Cleanup(func() { cch.Close(); r.ch.Close() })
	return cch, r.ch
}

// recorder collects a channel's callbacks.
type recorder struct {
	mu       sync.Mutex
	beats    int
	peer     uint64
	msgs     [][]byte
	dead     []error
	deadAt   time.Time
	changed  chan struct{}
	consumed atomic.Uint64
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 1)} }

func (r *recorder) notify() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *recorder) heartbeat(interval time.Duration, misses int) Heartbeat {
	return Heartbeat{
		Interval: interval,
		Misses:   misses,
		Consumed: r.consumed.Load,
		OnHeartbeat: func(v uint64) {
			r.mu.Lock()
			r.beats++
			r.peer = v
			r.mu.Unlock()
			r.notify()
		},
		OnMessage: func(m []byte) {
			r.mu.Lock()
			r.msgs = append(r.msgs, m)
			r.mu.Unlock()
			r.notify()
		},
		OnDead: func(err error) {
			r.mu.Lock()
			r.dead = append(r.dead, err)
			r.deadAt = time.Now()
			r.mu.Unlock()
			r.notify()
		},
	}
}

// until waits for cond (checked under r.mu) or fails the test.
func (r *recorder) until(t testing.TB, what string, cond func(r *recorder) bool) {
	t.Helper()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok := cond(r)
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.changed:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// waitDead waits for OnDead and returns its error.
func (r *recorder) waitDead(t testing.TB) error {
	t.Helper()
	r.until(t, "OnDead", func(r *recorder) bool { return len(r.dead) > 0 })
	_, _, dead := r.snapshot()
	return dead[0]
}

func (r *recorder) snapshot() (beats int, peer uint64, dead []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.beats, r.peer, append([]error(nil), r.dead...)
}

func TestChannelVerifiedHeartbeats(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := pair(t, s, c)
	if cch.ID() != testID || sch.ID() != testID {
		t.Fatalf("IDs %x %x", cch.ID(), sch.ID())
	}
	cr, sr := newRecorder(), newRecorder()
	cr.consumed.Store(111)
	sr.consumed.Store(222)
	cch.Start(cr.heartbeat(20*time.Millisecond, 50))
	sch.Start(sr.heartbeat(20*time.Millisecond, 50))
	cr.until(t, "server's count at client", func(r *recorder) bool { return r.peer == 222 })
	sr.until(t, "client's count at server", func(r *recorder) bool { return r.peer == 111 })

	// Counters move on; the next heartbeats carry them.
	cr.consumed.Store(1 << 40)
	sr.consumed.Store(333)
	sr.until(t, "client's new count", func(r *recorder) bool { return r.peer == 1<<40 })
	cr.until(t, "server's new count", func(r *recorder) bool { return r.peer == 333 && r.beats >= 3 })
}

// pollUntil polls cond until it holds, or fails the test.
func pollUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testwait.Within(t, wait, what, func() error {
		if !cond() {
			return errors.New("not yet")
		}
		return nil
	})
}

func TestSetPolicy(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := pair(t, s, c)
	cr, sr := newRecorder(), newRecorder()
	const fast = 10 * time.Millisecond
	cch.Start(cr.heartbeat(fast, 1000))
	sch.Start(sr.heartbeat(fast, 1000))
	cses, sses := cch.conn.(*vlink).s, sch.conn.(*vlink).s

	// ratio returns how many datagrams the client's session got from the server's while
	// the server's got n from the client's: each session sends at its channels' interval.
	ratio := func(n int64) float64 {
		c0, s0 := cses.dgramsIn.Load(), sses.dgramsIn.Load()
		pollUntil(t, fmt.Sprintf("%d client datagrams", n), func() bool { return sses.dgramsIn.Load() >= s0+n })
		return float64(cses.dgramsIn.Load()-c0) / float64(n)
	}
	if r := ratio(20); r > 3 {
		t.Fatalf("same interval: %.1f server datagrams per client datagram", r)
	}
	cch.SetPolicy(10*fast, 1000)
	if r := ratio(5); r < 3 {
		t.Fatalf("client interval 10x: only %.1f server datagrams per client datagram", r)
	}
	cch.SetPolicy(fast, 1000)
	if r := ratio(20); r > 3 {
		t.Fatalf("back to same interval: %.1f server datagrams per client datagram", r)
	}

	// The new policy decides when the peer is dead.
	cch.SetPolicy(fast, 4)
	sses.mute.Store(true)
	err := cr.waitDead(t)
	var hto *HeartbeatTimeoutError
	if !errors.As(err, &hto) || hto.Misses != 4 || hto.Interval != fast {
		t.Fatalf("OnDead: %v, want a timeout after 4 x %v", err, fast)
	}
}

// rawDial opens a QUIC connection that speaks the control ALPN but lets the
// test write the binding itself.
func rawDial(t *testing.T, s *Server) *quic.Conn {
	t.Helper()
	tr := &quic.Transport{Conn: listenUDP(t)}
	t.Cleanup(func() { tr.Close(); tr.Conn.Close() })
	conn, err := tr.Dial(ctxT(t), s.Addr(), clientTLS(), quicConfig(time.Second, 10*time.Second, false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return conn
}

func listenUDP(t testing.TB) *net.UDPConn {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

// closedWith waits until conn is closed and returns the peer's error code.
func closedWith(t *testing.T, conn *quic.Conn) quic.ApplicationErrorCode {
	t.Helper()
	select {
	case <-conn.Context().Done():
	case <-time.After(wait):
		t.Fatal("connection not closed by server")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(conn.Context()); !errors.As(err, &ae) || !ae.Remote {
		t.Fatalf("closed with %v, want a remote application error", err)
	}
	return ae.ErrorCode
}

// sendBind opens the session stream of conn (a raw client session), binds channel num
// of id with mac and returns the type of the server's answer frame.
func sendBind(t *testing.T, conn *quic.Conn, num uint32, id ID, mac [MACLen]byte) byte {
	t.Helper()
	str, err := conn.OpenStreamSync(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := str.Write(frame(FrameBind, num, id[:], mac[:])); err != nil {
		t.Fatal(err)
	}
	var hdr [SessionFrameHeaderLen]byte
	str.SetReadDeadline(time.Now().Add(wait))
	if _, err := io.ReadFull(str, hdr[:]); err != nil {
		t.Fatal(err)
	}
	return hdr[0]
}

func TestRefused(t *testing.T) {
	otherID := ID{0xff}
	s := newServer(t, &ServerConfig{HandshakeTimeout: 500 * time.Millisecond})
	c := newClient(t)
	ctx := ctxT(t)

	t.Run("wrong key", func(t *testing.T) {
		_, err := c.Dial(ctx, s.Addr(), testID, []byte("not the key"))
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("got %v, want ErrRefused", err)
		}
	})
	t.Run("unknown id", func(t *testing.T) {
		_, err := c.Dial(ctx, s.Addr(), otherID, testKey)
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("got %v, want ErrRefused", err)
		}
	})
	t.Run("no proof", func(t *testing.T) {
		conn := rawDial(t, s)
		if code := closedWith(t, conn); code != codeTimeout {
			t.Fatalf("code %#x, want %#x", code, codeTimeout)
		}
	})
	t.Run("malformed frame", func(t *testing.T) {
		conn := rawDial(t, s)
		str, err := conn.OpenStreamSync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		str.Write(bytes.Repeat([]byte{9}, 49))
		if code := closedWith(t, conn); code != codeProtocol {
			t.Fatalf("code %#x, want %#x", code, codeProtocol)
		}
	})
	t.Run("replayed proof", func(t *testing.T) {
		// A valid proof for connection A, replayed on connection B (what a
		// relaying man in the middle would do).
		a, b := rawDial(t, s), rawDial(t, s)
		ekmA, err := exporter(a)
		if err != nil {
			t.Fatal(err)
		}
		ekmB, _ := exporter(b)
		if bytes.Equal(ekmA, ekmB) {
			t.Fatal("two sessions share an exporter value")
		}
		if typ := sendBind(t, b, 0, testID, bindMAC(testKey, labelClient, ekmA, 0)); typ != FrameRefuse {
			t.Fatalf("answer %#x, want a refusal", typ)
		}
		// The right proof on A still works, so the refusal was about B.
		if typ := sendBind(t, a, 0, testID, bindMAC(testKey, labelClient, ekmA, 0)); typ != FrameBindOK {
			t.Fatalf("answer %#x, want FrameBindOK", typ)
		}
		ch, err := s.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ch.Close()
	})

	// Nothing refused reached Accept: the next channel accepted is the good one.
	cch, sch := pair(t, s, c)
	cr, sr := newRecorder(), newRecorder()
	cch.Start(cr.heartbeat(20*time.Millisecond, 100))
	sch.Start(sr.heartbeat(20*time.Millisecond, 100))
	sr.until(t, "heartbeat", func(r *recorder) bool { return r.beats > 0 })
	actx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if ch, err := s.Accept(actx); err == nil {
		t.Fatalf("unexpected channel %x accepted", ch.ID())
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("accept: %v, want a timeout", err)
	}
}

func TestBadServerProof(t *testing.T) {
	// A server holding a different key for the ID fails the client's check
	// only if its proof is wrong; here it refuses first, so test the client
	// check with a server that answers with garbage.
	pc := listenUDP(t)
	cert, err := selfSignedCert()
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: pc}
	ln, err := tr.Listen(serverTLS(cert), quicConfig(time.Second, 10*time.Second, true))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); tr.Close(); pc.Close(); <-done })
	go func() {
		defer close(done)
		conn, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		str, err := conn.AcceptStream(context.Background())
		if err == nil {
			var buf [SessionFrameHeaderLen + 16 + MACLen]byte
			io.ReadFull(str, buf[:])
			str.Write(frame(FrameBindOK, 0, make([]byte, MACLen)))
		}
		<-conn.Context().Done()
	}()
	c := newClient(t)
	_, err = c.Dial(ctxT(t), pc.LocalAddr(), testID, testKey)
	if !errors.Is(err, ErrBadProof) {
		t.Fatalf("got %v, want ErrBadProof", err)
	}
}

func TestMaxPending(t *testing.T) {
	s := newServer(t, &ServerConfig{MaxPending: 1, HandshakeTimeout: wait})
	holder := rawDial(t, s) // never sends its proof: holds the only slot
	_ = holder
	second := rawDial(t, s)
	if code := closedWith(t, second); code != codeBusy {
		t.Fatalf("code %#x, want busy %#x", code, codeBusy)
	}
}

func TestPeerDisappears(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := pair(t, s, c)
	cr, sr := newRecorder(), newRecorder()
	const interval, misses = 50 * time.Millisecond, 4
	cch.Start(cr.heartbeat(interval, misses))
	sch.Start(sr.heartbeat(interval, misses))
	sr.until(t, "heartbeats", func(r *recorder) bool { return r.beats >= 3 })

	// The client's transport dies without a CONNECTION_CLOSE.
	gone := time.Now()
	c.tr.Close()
	sr.until(t, "OnDead at server", func(r *recorder) bool { return len(r.dead) > 0 })
	cr.until(t, "OnDead at client", func(r *recorder) bool { return len(r.dead) > 0 })
	sch.Close()
	cch.Close() // no callback after Close returned: the counts are final

	_, _, sdead := sr.snapshot()
	if len(sdead) != 1 {
		t.Fatalf("server OnDead called %d times", len(sdead))
	}
	var hto *HeartbeatTimeoutError
	if !errors.As(sdead[0], &hto) {
		t.Fatalf("server OnDead: %v, want a HeartbeatTimeoutError", sdead[0])
	}
	if ne, ok := sdead[0].(net.Error); !ok || !ne.Timeout() ||
		!errors.Is(sdead[0], os.ErrDeadlineExceeded) || !errors.Is(sdead[0], net.ErrClosed) {
		t.Fatalf("server OnDead error %v is not a closed timeout", sdead[0])
	}
	// The peer cannot be declared dead before (misses-1) intervals after it
	// went silent (its last heartbeat is at most one interval older).
	sr.mu.Lock()
	elapsed := sr.deadAt.Sub(gone)
	sr.mu.Unlock()
	if elapsed < (misses-1)*interval {
		t.Fatalf("declared dead %v after the peer left, before %d intervals", elapsed, misses-1)
	}
	t.Logf("dead after %v (%d x %v); %v", elapsed, misses, interval, sdead[0])

	_, _, cdead := cr.snapshot()
	if len(cdead) != 1 || !errors.Is(cdead[0], net.ErrClosed) {
		t.Fatalf("client OnDead: %v", cdead)
	}
	if err := sch.Send(context.Background(), []byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Send after death: %v", err)
	}
}

func TestPeerBlackholed(t *testing.T) {
	// The client's session stops sending (a frozen process): the QUIC connection is alive
	// but the heartbeat logic decides.
	s, c := newServer(t, nil), newClient(t)
	cch, sch := pair(t, s, c)
	cch.conn.(*vlink).s.mute.Store(true)
	sr := newRecorder()
	sch.Start(sr.heartbeat(30*time.Millisecond, 3))
	sr.until(t, "OnDead", func(r *recorder) bool { return len(r.dead) > 0 })
	sch.Close()
	_, _, dead := sr.snapshot()
	var hto *HeartbeatTimeoutError
	if len(dead) != 1 || !errors.As(dead[0], &hto) || hto.Misses != 3 {
		t.Fatalf("OnDead: %v", dead)
	}
}

func TestPeerClose(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := pair(t, s, c)
	sr := newRecorder()
	sch.Start(sr.heartbeat(time.Second, 1000)) // a heartbeat timeout would take 1000s
	cch.Close()
	cch.Close() // idempotent
	if err := sr.waitDead(t); !errors.Is(err, ErrPeerClosed) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("OnDead: %v, want ErrPeerClosed", err)
	}
	if err := cch.Send(context.Background(), nil); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
	if err := cch.Ack(1); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Ack after Close: %v", err)
	}
}

func TestServerCloseClosesChannels(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, _ := pair(t, s, c)
	cr := newRecorder()
	cch.Start(cr.heartbeat(time.Second, 1000))
	s.Close()
	if err := cr.waitDead(t); !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("OnDead: %v, want ErrPeerClosed", err)
	}
	if _, err := s.Accept(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
}

func TestCloseFromCallback(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := pair(t, s, c)
	closed := make(chan struct{})
	sch.Start(Heartbeat{
		Interval:    10 * time.Millisecond,
		OnHeartbeat: func(uint64) { sch.Close() }, // must not deadlock
		OnDead:      func(error) { t.Error("OnDead after Close") },
	})
	cr := newRecorder()
	cch.Start(cr.heartbeat(10*time.Millisecond, 1000))
	go func() { <-sch.loopDone; close(closed) }()
	select {
	case <-closed:
	case <-time.After(wait):
		t.Fatal("Close from callback deadlocked")
	}
	cr.until(t, "client sees close", func(r *recorder) bool { return len(r.dead) > 0 })
}

func TestMessages(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := pair(t, s, c)
	cr, sr := newRecorder(), newRecorder()
	cch.Start(cr.heartbeat(time.Second, 1000))
	sch.Start(sr.heartbeat(time.Second, 1000))
	ctx := ctxT(t)

	var want [][]byte
	for i := range 100 {
		m := bytes.Repeat([]byte{byte(i)}, i*97%1000)
		want = append(want, m)
	}
	want = append(want, bytes.Repeat([]byte{0xee}, MaxMessageLen), []byte{})
	go func() {
		for _, m := range want {
			if err := cch.Send(ctx, m); err != nil {
				t.Errorf("send: %v", err)
				return
			}
		}
	}()
	sr.until(t, "all messages", func(r *recorder) bool { return len(r.msgs) >= len(want) })
	sr.mu.Lock()
	for i, m := range sr.msgs {
		if !bytes.Equal(m, want[i]) {
			t.Fatalf("message %d: got %d bytes, want %d", i, len(m), len(want[i]))
		}
	}
	sr.mu.Unlock()

	// And the other way.
	if err := sch.Send(ctx, []byte("pong")); err != nil {
		t.Fatal(err)
	}
	cr.until(t, "reply", func(r *recorder) bool { return len(r.msgs) == 1 && string(r.msgs[0]) == "pong" })

	if err := cch.Send(ctx, make([]byte, MaxMessageLen+1)); !errors.Is(err, ErrMessageTooLong) {
		t.Fatalf("oversized Send: %v", err)
	}
}

func TestOversizedFrameClosesChannel(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := pair(t, s, c)
	sr := newRecorder()
	sch.Start(sr.heartbeat(time.Second, 1000))
	// Bypass Send's check: a length prefix over the limit.
	if _, err := cch.conn.(*vlink).s.str.Write(AppendSessionFrameHeader(nil, FrameMsg, 0, MaxMessageLen+1)); err != nil {
		t.Fatal(err)
	}
	if err := sr.waitDead(t); !errors.Is(err, ErrTooLong) {
		t.Fatalf("OnDead: %v, want ErrTooLong", err)
	}
	// The client learns why.
	<-cch.conn.Context().Done()
	var ae *quic.ApplicationError
	if err := context.Cause(cch.conn.Context()); !errors.As(err, &ae) || ae.ErrorCode != codeProtocol {
		t.Fatalf("client conn closed with %v", err)
	}
}

func TestMalformedDatagramClosesChannel(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := pair(t, s, c)
	sr := newRecorder()
	sch.Start(sr.heartbeat(time.Second, 1000))
	if err := cch.conn.(*vlink).s.conn.SendDatagram([]byte{TypeHeartbeatBatch, 1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := sr.waitDead(t); !errors.Is(err, ErrShort) {
		t.Fatalf("OnDead: %v, want ErrShort", err)
	}
}

func TestAckRateLimited(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	cch, sch := pair(t, s, c)
	cr, sr := newRecorder(), newRecorder()
	cch.Start(Heartbeat{Interval: time.Hour, AckGap: 5 * time.Millisecond})
	sch.Start(sr.heartbeat(time.Hour, 1000))
	sr.until(t, "first heartbeat", func(r *recorder) bool { return r.beats >= 1 })
	const n = 20000
	for i := uint64(1); i <= n; i++ {
		if err := cch.Ack(i); err != nil {
			t.Fatal(err)
		}
	}
	sr.until(t, "last ack", func(r *recorder) bool { return r.peer == n })
	beats, _, _ := sr.snapshot()
	if beats > n/20 {
		t.Fatalf("%d Acks sent %d heartbeats: not rate-limited", n, beats)
	}
	t.Logf("%d Acks -> %d heartbeats", n, beats)
	_ = cr
}

func TestDialTimeout(t *testing.T) {
	pc := listenUDP(t) // silent UDP port
	defer pc.Close()
	c := newClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.Dial(ctx, pc.LocalAddr(), testID, testKey)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got %v, want a timeout net.Error", err)
	}
}

func TestDialTCPAddr(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	ua := s.Addr().(*net.UDPAddr)
	ctx := ctxT(t)
	accepted := make(chan *Channel, 1)
	go func() {
		ch, _ := s.Accept(ctx)
		accepted <- ch
	}()
	ch, err := c.Dial(ctx, &net.TCPAddr{IP: ua.IP, Port: ua.Port}, testID, testKey)
	if err != nil {
		t.Fatal(err)
	}
	ch.Close()
	if sch := <-accepted; sch != nil {
		sch.Close()
	}
}

func TestClientClosed(t *testing.T) {
	s, c := newServer(t, nil), newClient(t)
	c.Close()
	if _, err := c.Dial(ctxT(t), s.Addr(), testID, testKey); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Dial after Close: %v", err)
	}
}

func TestSlowCallbackIsNotDeath(t *testing.T) {
	// A callback that blocks the loop for many intervals must not make the
	// channel declare a live peer dead: the session hears the peer meanwhile.
	s, c := newServer(t, nil), newClient(t)
	cch, sch := pair(t, s, c)
	const interval = 20 * time.Millisecond
	sr := newRecorder()
	h := sr.heartbeat(interval, 3)
	slowDone := make(chan struct{})
	h.OnMessage = func([]byte) {
		time.Sleep(10 * interval) // a slow application, well past Misses*Interval
		close(slowDone)
	}
	sch.Start(h)
	cch.Start(newRecorder().heartbeat(interval, 1000))
	if err := cch.Send(ctxT(t), []byte("slow")); err != nil {
		t.Fatal(err)
	}
	<-slowDone
	ses := sch.conn.(*vlink).s
	n0 := ses.dgramsIn.Load()
	pollUntil(t, "datagrams after the slow callback", func() bool { return ses.dgramsIn.Load() >= n0+10 })
	if err := cch.Ack(42); err != nil {
		t.Fatal(err)
	}
	sr.until(t, "an ack after the slow callback", func(r *recorder) bool { return r.peer == 42 })
	if _, _, dead := sr.snapshot(); len(dead) != 0 {
		t.Fatalf("declared dead after a slow callback: %v", dead)
	}
}

func TestDialIPv6(t *testing.T) {
	// The client's dual-stack socket reaches IPv6 servers too.
	pc, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Fatalf("no IPv6 loopback: %v", err)
	}
	s, err := Listen(pc, &ServerConfig{Key: keys(map[ID][]byte{testID: testKey})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cch, sch := pair(t, s, newClient(t))
	cr, sr := newRecorder(), newRecorder()
	cch.Start(cr.heartbeat(20*time.Millisecond, 100))
	sch.Start(sr.heartbeat(20*time.Millisecond, 100))
	cr.until(t, "heartbeat over IPv6", func(r *recorder) bool { return r.beats > 0 })
}

func TestRelayingManInTheMiddle(t *testing.T) {
	// A man in the middle terminates the client's QUIC session with its own
	// certificate (which the client does not verify) and relays the control
	// stream over a second session to the real server. The two sessions have
	// different exporter values, so the relayed proof fails.
	s := newServer(t, nil)
	cert, err := selfSignedCert()
	if err != nil {
		t.Fatal(err)
	}
	front := &quic.Transport{Conn: listenUDP(t)}
	back := &quic.Transport{Conn: listenUDP(t)}
	ln, err := front.Listen(serverTLS(cert), quicConfig(time.Second, 10*time.Second, true))
	if err != nil {
		t.Fatal(err)
	}
	upstreamCode := make(chan quic.ApplicationErrorCode, 1)
	relayDone := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		front.Close()
		back.Close()
		front.Conn.Close()
		back.Conn.Close()
		<-relayDone
	})
	go func() {
		defer close(relayDone)
		ctx := context.Background()
		down, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		defer down.CloseWithError(0, "")
		up, err := back.Dial(ctx, s.Addr(), clientTLS(), quicConfig(time.Second, 10*time.Second, false))
		if err != nil {
			return
		}
		defer up.CloseWithError(0, "")
		ds, err := down.AcceptStream(ctx)
		if err != nil {
			return
		}
		us, err := up.OpenStreamSync(ctx)
		if err != nil {
			return
		}
		copied := make(chan struct{})
		go func() { io.Copy(us, ds); close(copied) }()
		io.Copy(ds, us) // until the server closes the upstream session
		<-up.Context().Done()
		down.CloseWithError(0, "")
		<-copied
		var ae *quic.ApplicationError
		if errors.As(context.Cause(up.Context()), &ae) {
			upstreamCode <- ae.ErrorCode
		}
	}()

	c := newClient(t)
	ch, err := c.Dial(ctxT(t), front.Conn.LocalAddr(), testID, testKey)
	if err == nil {
		ch.Close()
		t.Fatal("dial through a relaying man in the middle succeeded")
	}
	t.Logf("client: %v", err)
	select {
	case code := <-upstreamCode:
		// The bind is refused with a frame; the session, which never gets a channel,
		// ends at the handshake timeout.
		if code != codeRefused && code != codeTimeout {
			t.Fatalf("server closed the relayed session with %#x, want refused or timeout", code)
		}
	case <-time.After(wait):
		t.Fatal("server did not refuse the relayed session")
	}
	actx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if ch, err := s.Accept(actx); err == nil {
		t.Fatalf("relayed channel %x accepted", ch.ID())
	}
}
