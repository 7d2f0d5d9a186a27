package tcprocks

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/testport"
)

// rawResume sends a RESUME hello for req to addr and returns the server's answer and the
// connection, as a third party would.
func rawResume(t *testing.T, addr string, req resumeMsg) ([]byte, *edp.Conn) {
	t.Helper()
	return rawHello(t, addr, appendResume(nil, req))
}

// rawHello offers rocks/1 to addr with the given Hello parameters and returns the server's
// answer and the connection.
func rawHello(t *testing.T, addr string, hello []byte) ([]byte, *edp.Conn) {
	t.Helper()
	cfg := &edp.Config{Enhancements: []edp.Enhancement{{
		Name: enhancementName, Version: enhancementVersion,
		Hello: func(edp.Role, []byte) ([]byte, any, error) { return hello, nil, nil },
	}}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ec, err := edp.Dial(ctx, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := findRocks(ec.Result().Agreed)
	if a == nil {
		ec.Close()
		t.Fatal("rocks/1 not agreed")
	}
	return a.Peer, ec
}

// expectClosed checks that the server closes ec without sending anything.
func expectClosed(t *testing.T, ec *edp.Conn) {
	t.Helper()
	ec.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := ec.Read(make([]byte, 64))
	if n != 0 || err == nil || errors.Is(err, errDeadline) {
		t.Fatalf("server answered a bad proof: n=%d err=%v", n, err)
	}
	ec.Close()
}

func TestHijackRejected(t *testing.T) {
	srvCfg, cliCfg := testConfigs(t)
	var evs eventLog
	srvCfg.Handler = &evs
	l := listen(t, srvCfg)
	c, s := pair(t, l, l.Addr().String(), cliCfg)
	echo(t, c, s, []byte("hello"))

	t.Run("wrong key", func(t *testing.T) {
		req := resumeMsg{ID: c.ID()}
		randomBytes(req.Nonce[:])
		ans, ec := rawResume(t, l.Addr().String(), req)
		if _, _, err := parseChallenge(ans); err != nil {
			t.Fatalf("answer %x: %v", ans, err)
		}
		var forged [macLen]byte
		randomBytes(forged[:])
		if _, err := ec.Write(appendProof(nil, forged)); err != nil {
			t.Fatal(err)
		}
		expectClosed(t, ec)
	})
	t.Run("replayed exchange", func(t *testing.T) {
		// A resume exchange recorded earlier: the client's request and its proof for the
		// server's nonce of that time.
		req := resumeMsg{ID: c.ID()}
		randomBytes(req.Nonce[:])
		var oldNs [nonceLen]byte
		randomBytes(oldNs[:])
		recorded := clientProof(c.keys.resume, c.id, req.Nonce, oldNs)

		ans, ec := rawResume(t, l.Addr().String(), req)
		ch, _, err := parseChallenge(ans)
		if err != nil {
			t.Fatal(err)
		}
		if ch.Nonce == oldNs {
			t.Fatal("server reused a nonce")
		}
		if _, err := ec.Write(appendProof(nil, recorded)); err != nil {
			t.Fatal(err)
		}
		expectClosed(t, ec)
	})
	t.Run("unknown ID", func(t *testing.T) {
		req := resumeMsg{}
		randomBytes(req.ID[:])
		ans, ec := rawResume(t, l.Addr().String(), req)
		defer ec.Close()
		if reason, _, err := parseRefuse(ans); err != nil || reason != refuseUnknown {
			t.Fatalf("answer %x, %v", ans, err)
		}
	})

	// Nothing changed: the rock never suspended and still works; then a real reconnection.
	if s.State() != Connected || evs.count(callbacks.Suspended) != 0 {
		t.Fatalf("server rock disturbed: %v, events %v", s.State(), evs.kinds())
	}
	echo(t, c, s, []byte("still here"))
	c.Suspend()
	waitFor(t, "resumption", func() bool { return evs.count(callbacks.Resumed) == 1 })
	echo(t, c, s, []byte("resumed"))
}

func TestReconnectTimeout(t *testing.T) {
	srvCfg, cliCfg := relayConfigs(t)
	var evs eventLog
	cliCfg.Handler = &evs
	cliCfg.Policy.ReconnectTimeout = 300 * time.Millisecond
	srvCfg.Policy.ReconnectTimeout = 300 * time.Millisecond
	l := listen(t, srvCfg)
	r := newRelay(t, l)
	c, s := pair(t, l, r.Addr().String(), cliCfg)
	echo(t, c, s, []byte("x"))
	r.Refuse(true)
	r.Reset()
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, ErrReconnectTimeout) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read: %v", err)
	}
	var ne interface{ Timeout() bool }
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read error %v is not a timeout net.Error", err)
	}
	if _, err := c.Write([]byte("y")); !errors.Is(err, ErrReconnectTimeout) {
		t.Fatalf("write: %v", err)
	}
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, ErrReconnectTimeout) {
		t.Fatalf("server read: %v", err)
	}
	waitFor(t, "closed event", func() bool { return evs.count(callbacks.Closed) == 1 })
	k := evs.kinds()
	if k[0] != callbacks.Suspended || k[len(k)-2] != callbacks.TimedOut || k[len(k)-1] != callbacks.Closed {
		t.Fatalf("events %v", k)
	}
}

func TestPeerLost(t *testing.T) {
	srvCfg, cliCfg := testConfigs(t)
	cliCfg.Policy.RefusalGrace = 300 * time.Millisecond
	// A port below the ephemeral range, so that no other socket takes it while it is free.
	l, err := Listen("tcp", testport.Addr(t), srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	c, s := pair(t, l, addr, cliCfg)
	echo(t, c, s, []byte("x"))
	// The server process "restarts": its listener and rocks vanish, a new one takes the port.
	s.mu.Lock()
	s.finish(errors.New("test: process gone"))
	s.unlock()
	l.Close()
	waitListener(t, l)
	l2, err := Listen("tcp", addr, srvCfg)
	if err != nil {
		t.Fatalf("listening again on %s: %v", addr, err)
	}
	t.Cleanup(func() { l2.Close(); waitListener(t, l2) })
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, ErrPeerLost) {
		t.Fatalf("read: %v", err)
	}
}
