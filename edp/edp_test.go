package edp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
)

// xorConn is a wrapping Init hook's conn: it XORs every byte with k.
type xorConn struct {
	net.Conn
	k byte
}

func (c *xorConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	for i := range b[:n] {
		b[i] ^= c.k
	}
	return n, err
}

func (c *xorConn) Write(b []byte) (int, error) {
	x := make([]byte, len(b))
	for i := range b {
		x[i] = b[i] ^ c.k
	}
	return c.Conn.Write(x)
}

// recorder records the hooks that ran, per side.
type recorder struct {
	mu  sync.Mutex
	log []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.log = append(r.log, s)
	r.mu.Unlock()
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log)
}

// testEnh returns an enhancement whose Hello sends "<side>:<name>" and checks the
// peer's params, and whose Init records itself and optionally wraps the conn.
func testEnh(rec *recorder, name string, version uint8, wrap byte, decline bool) Enhancement {
	id := ID{name, version}
	return Enhancement{
		Name: name, Version: version,
		Hello: func(role Role, peer []byte) ([]byte, any, error) {
			if decline {
				return nil, nil, errors.New("declined")
			}
			if role == RoleServer && string(peer) != "client:"+id.String() {
				return nil, nil, fmt.Errorf("server got params %q", peer)
			}
			return []byte(role.String() + ":" + id.String()), "state-" + role.String(), nil
		},
		Init: func(ctx context.Context, c net.Conn, a *Agreed) (net.Conn, error) {
			if _, ok := ctx.Deadline(); !ok {
				return nil, errors.New("init ctx without deadline")
			}
			local := a.State.(string)
			rec.add(fmt.Sprintf("%s %s local=%s peer=%s", local, a.ID, a.Local, a.Peer))
			if wrap != 0 {
				return &xorConn{c, wrap}, nil
			}
			return c, nil
		},
	}
}

func TestNegotiation(t *testing.T) {
	var srec, crec recorder
	srv := startApp(t, serverCfg(
		testEnh(&srec, "b", 2, 0, false),
		testEnh(&srec, "a", 1, 0x55, false),
		testEnh(&srec, "d", 1, 0, false),
		testEnh(&srec, "e", 1, 0, true), // the server declines e/1 in Hello
	), echo)
	cache := NewCache(0)
	cfg := &Config{Cache: cache, Enhancements: []Enhancement{
		testEnh(&crec, "a", 1, 0x55, false),
		testEnh(&crec, "c", 1, 0, false), // the server lacks c/1
		testEnh(&crec, "e", 1, 0, false),
		testEnh(&crec, "b", 2, 0, false),
	}}
	ctx := testCtx(t)

	c, err := Dial(ctx, "tcp", srv.addr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := c.Result()
	if !r.Enhanced || r.Cached || r.Reason != ReasonNone {
		t.Fatalf("result %+v", r)
	}
	if got, want := fmt.Sprint(r.Offered), "[b/2 a/1 d/1 e/1]"; got != want {
		t.Errorf("offered %s, want %s", got, want)
	}
	var ids []string
	for _, a := range r.Agreed {
		ids = append(ids, a.ID.String())
	}
	if got, want := fmt.Sprint(ids), "[a/1 b/2]"; got != want {
		t.Fatalf("agreed %s, want %s (client order)", got, want)
	}
	if c.connects != 2 || c.roundTrips != 2 {
		t.Errorf("cold dial: %d connects, %d round trips; want 2, 2", c.connects, c.roundTrips)
	}
	roundTrip(t, c, "through both xor wrappers")
	wantClient := []string{
		"state-client a/1 local=client:a/1 peer=server:a/1",
		"state-client b/2 local=client:b/2 peer=server:b/2",
	}
	if got := crec.get(); !slices.Equal(got, wantClient) {
		t.Errorf("client hooks %q, want %q", got, wantClient)
	}
	wantServer := []string{
		"state-server a/1 local=server:a/1 peer=client:a/1",
		"state-server b/2 local=server:b/2 peer=client:b/2",
	}
	waitFor(t, "server hooks", func() bool { return len(srec.get()) == 2 })
	if got := srec.get(); !slices.Equal(got, wantServer) {
		t.Errorf("server hooks %q, want %q", got, wantServer)
	}

	// A second Dial skips the probe: connect + one round trip.
	c2, err := Dial(ctx, "tcp", srv.addr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if r := c2.Result(); !r.Enhanced || !r.Cached || len(r.Agreed) != 2 {
		t.Fatalf("cached result %+v", r)
	}
	if c2.connects != 1 || c2.roundTrips != 1 {
		t.Errorf("cached dial: %d connects, %d round trips; want 1, 1", c2.connects, c2.roundTrips)
	}
	roundTrip(t, c2, "again")
	if s := srv.l.Stats(); s.Probes != 1 || s.Enhanced != 2 {
		t.Errorf("server stats %+v, want 1 probe, 2 enhanced", s)
	}
}

func TestNilConfig(t *testing.T) {
	srv := startApp(t, nil, echo)
	c, err := Dial(testCtx(t), "tcp", srv.addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r := c.Result(); !r.Enhanced || len(r.Agreed) != 0 || len(r.Announcement) != AnnouncementLen {
		t.Fatalf("result %+v", r)
	}
	roundTrip(t, c, "hello")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("after CloseWrite: %q, %v", b, err)
	}
}
