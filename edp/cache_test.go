package edp

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeClock is a Cache clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newTestCache(ttl time.Duration) (*Cache, *fakeClock) {
	clk := &fakeClock{now: time.Unix(1e9, 0)}
	c := NewCache(ttl)
	c.now = clk.Now
	return c, clk
}

func TestCacheTTL(t *testing.T) {
	srv := startApp(t, serverCfg(), echo)
	cache, clk := newTestCache(time.Minute)
	cfg := &Config{Cache: cache}
	dial := func() *Conn {
		c, err := Dial(testCtx(t), "tcp", srv.addr(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		return c
	}
	dial()
	clk.Advance(59 * time.Second)
	if c := dial(); !c.Result().Cached || srv.l.Stats().Probes != 1 {
		t.Fatalf("within the TTL: %+v, %+v", c.Result(), srv.l.Stats())
	}
	clk.Advance(time.Second)
	if c := dial(); c.Result().Cached || srv.l.Stats().Probes != 2 {
		t.Fatalf("after the TTL: %+v, %+v", c.Result(), srv.l.Stats())
	}
}

func TestCacheNegativeTTL(t *testing.T) {
	cache, clk := newTestCache(time.Hour)
	cache.store("a:1", Result{Reason: ReasonClosed})
	cache.store("b:1", Result{Reason: ReasonTruncated}) // never cached
	if _, ok := cache.Lookup("b:1"); ok {
		t.Error("truncated announcement cached")
	}
	clk.Advance(DefaultNegativeTTL - time.Second)
	if e, ok := cache.Lookup("a:1"); !ok || e.Enhanced || e.Reason != ReasonClosed {
		t.Fatalf("negative entry %+v, %v", e, ok)
	}
	clk.Advance(time.Second)
	if _, ok := cache.Lookup("a:1"); ok {
		t.Fatal("negative entry outlived DefaultNegativeTTL")
	}
	cache.SetNegativeTTL(0)
	cache.store("a:1", Result{Reason: ReasonClosed})
	if cache.Len() != 0 {
		t.Fatal("negative entry stored with negative TTL 0")
	}
	var nilCache *Cache
	nilCache.store("a:1", Result{Enhanced: true})
	nilCache.Invalidate("a:1")
	if _, ok := nilCache.Lookup("a:1"); ok || nilCache.Len() != 0 {
		t.Fatal("nil cache remembers")
	}
}

func TestCacheBounded(t *testing.T) {
	cache, _ := newTestCache(time.Hour)
	for i := range MaxCacheEntries + 10 {
		cache.store(net.JoinHostPort("10.0.0.1", string(rune('a'+i%26))+time.Duration(i).String()), Result{Enhanced: true})
	}
	if n := cache.Len(); n > MaxCacheEntries {
		t.Fatalf("%d entries, limit %d", n, MaxCacheEntries)
	}
}

func TestCacheInvalidatedByFailedHandshake(t *testing.T) {
	srv := startApp(t, serverCfg(Enhancement{Name: "rocks", Version: 1}), echo)
	cache := NewCache(0)
	fail := errors.New("client init refuses")
	cfg := &Config{Cache: cache, Enhancements: []Enhancement{{Name: "rocks", Version: 1,
		Init: func(ctx context.Context, c net.Conn, a *Agreed) (net.Conn, error) { return nil, fail }}}}
	_, err := Dial(testCtx(t), "tcp", srv.addr(), cfg)
	var he *HandshakeError
	if !errors.Is(err, fail) || !errors.As(err, &he) || he.Timeout() {
		t.Fatalf("dial: %v", err)
	}
	if _, ok := cache.Lookup(srv.addr()); ok {
		t.Fatal("cache entry survived a failed handshake")
	}
	// And from a cache hit: the entry goes too (no re-probe for an Init error).
	cache.store(srv.addr(), Result{Enhanced: true, Announcement: srv.l.Announcement()})
	if _, err := Dial(testCtx(t), "tcp", srv.addr(), cfg); !errors.Is(err, fail) {
		t.Fatalf("dial: %v", err)
	}
	if _, ok := cache.Lookup(srv.addr()); ok || srv.l.Stats().Probes != 1 {
		t.Fatalf("cache entry survived, or re-probed: %+v", srv.l.Stats())
	}
}

// A server restarts on the same address with a new announcement: the cached one is
// stale, the server says so, and the client re-probes once and gets through.
func TestStaleAnnouncementAfterRestart(t *testing.T) {
	ln := listenTCP(t)
	addr := ln.Addr().String()
	l1 := NewListener(ln, serverCfg())
	cache := NewCache(0)
	cfg := &Config{Cache: cache}
	accept := func(l *Listener) {
		go func() {
			if c, err := l.AcceptConn(); err == nil {
				c.Close()
			}
		}()
	}
	accept(l1)
	c, err := Dial(testCtx(t), "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	l1.Close()

	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	l2 := NewListener(ln2, serverCfg())
	defer l2.Close()
	accept(l2)
	c, err = Dial(testCtx(t), "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	r := c.Result()
	if !r.Enhanced || r.Cached || string(r.Announcement) != string(l2.Announcement()) {
		t.Fatalf("result %+v", r)
	}
	// The server counts the stale connection once the client has closed it (after reading
	// the reject), and the enhanced one once its Init hooks have returned: either may be
	// after the client's Dial returned.
	waitFor(t, "the stale and the enhanced connection counted", func() bool {
		s := l2.Stats()
		return s.Failed >= 1 && s.Enhanced >= 1
	})
	if s := l2.Stats(); s.Probes != 1 || s.Failed != 1 || s.Enhanced != 1 {
		t.Errorf("new server stats %+v, want 1 stale, 1 probe, 1 enhanced", s)
	}
	if c.connects != 3 || c.roundTrips != 3 {
		t.Errorf("%d connects, %d round trips; want 3, 3", c.connects, c.roundTrips)
	}
}

// Two server processes share an announcement file: a client that probed one
// reaches the other without a probe.
func TestSharedAnnouncement(t *testing.T) {
	path := filepath.Join(t.TempDir(), "announcement")
	if err := WriteAnnouncement(path); err != nil {
		t.Fatal(err)
	}
	ann, err := LoadAnnouncement(path)
	if err != nil {
		t.Fatal(err)
	}
	a := startApp(t, &Config{Announcement: ann, FirstByteWait: 5 * time.Second}, echo)
	b := startApp(t, &Config{Announcement: ann, FirstByteWait: 5 * time.Second}, echo)
	r, err := Probe(testCtx(t), "tcp", a.addr(), nil)
	if err != nil || !r.Enhanced {
		t.Fatal(r, err)
	}
	c, err := Dial(testCtx(t), "tcp", b.addr(), &Config{Announcement: r.Announcement})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Result().Enhanced || !c.Result().Cached || b.l.Stats().Probes != 0 {
		t.Fatalf("result %+v, stats %+v", c.Result(), b.l.Stats())
	}
	roundTrip(t, c, "shared")

	bad := filepath.Join(t.TempDir(), "bad")
	if err := WriteAnnouncement(filepath.Join(t.TempDir(), "no", "such", "dir")); err == nil {
		t.Error("WriteAnnouncement into a missing directory succeeded")
	}
	if _, err := LoadAnnouncement(bad); err == nil {
		t.Error("LoadAnnouncement of a missing file succeeded")
	}
}

func TestDialCancelled(t *testing.T) {
	srv := startPlain(t, func(c *net.TCPConn) { c.Read(make([]byte, 1)) }) // silent
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := Dial(ctx, "tcp", srv.ln.Addr().String(), &Config{ProbeTimeoutMin: time.Hour, ProbeTimeoutMax: time.Hour})
		errc <- err
	}()
	waitFor(t, "the probe to connect", func() bool { return srv.accepted.Load() == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("dial: %v", err)
	}
}

// The cache says enhanced but the server was replaced by an ordinary one: the
// handshake gets no EDP reply, the client re-probes and falls back.
func TestCachedServerReplacedByOrdinary(t *testing.T) {
	srv := startPlain(t, func(c *net.TCPConn) {
		c.Read(make([]byte, 4096))
		c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
		c.Close()
	})
	addr := srv.ln.Addr().String()
	cache := NewCache(0)
	cache.store(addr, Result{Enhanced: true, Announcement: NewAnnouncement()})
	c, err := Dial(testCtx(t), "tcp", addr, &Config{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r := c.Result(); r.Enhanced || r.Reason != ReasonData || r.Cached {
		t.Fatalf("result %+v", r)
	}
	if c.connects != 3 || c.roundTrips != 2 {
		t.Errorf("%d connects, %d round trips; want 3 (handshake, probe, fresh), 2", c.connects, c.roundTrips)
	}
	if e, ok := cache.Lookup(addr); !ok || e.Enhanced {
		t.Errorf("cache entry %+v, %v; want negative", e, ok)
	}
}
