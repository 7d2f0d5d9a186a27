package locator

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// hostAddrs is a settable address list standing in for the host's interfaces.
type hostAddrs struct {
	mu sync.Mutex
	a  []netip.Addr
}

func (h *hostAddrs) set(a ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.a = addrs(a...)
}

func (h *hostAddrs) get() []netip.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.a)
}

// updates collects a Registrar's status reports.
func updates() (func(RegistrarStatus), <-chan RegistrarStatus) {
	ch := make(chan RegistrarStatus, 100)
	return func(s RegistrarStatus) {
		select {
		case ch <- s:
		default:
		}
	}, ch
}

func next(t *testing.T, ch <-chan RegistrarStatus) RegistrarStatus {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(patience):
		t.Fatal("no registration attempt")
	}
	return RegistrarStatus{}
}

func TestRegistrar(t *testing.T) {
	key := testKey(t, "rock-key")
	s := startServer(t, key, nil)
	cfg := clientConfig(s.Addr(), &key)
	cfg.Zone = "" // found through the SOA, once
	ctx := ctxT(t)
	var host hostAddrs
	host.set("192.0.2.1", "2001:db8::1", "127.0.0.1", "fe80::1%eth0")
	onUpdate, ch := updates()
	r, err := NewRegistrar(cfg, Registration{Name: "mobile.rock.test", Port: 7000, Addrs: host.get, Refresh: time.Hour, OnUpdate: onUpdate})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	st := next(t, ch)
	if st.Err != nil || st.Successes != 1 {
		t.Fatalf("first registration: %+v", st)
	}
	lookup := func() string {
		got, err := Lookup(ctx, cfg, "mobile.rock.test")
		if err != nil {
			t.Fatal(err)
		}
		return slicesJoin(got)
	}
	// Loopback is a usable address; the scoped link-local one is not.
	if got := lookup(); got != "[2001:db8::1]:7000 127.0.0.1:7000 192.0.2.1:7000" {
		t.Fatalf("Lookup = %s", got)
	}
	// An address change, announced by the network monitor, is registered at once.
	host.set("198.51.100.2")
	start := time.Now()
	r.Changed()
	if st := next(t, ch); st.Err != nil || st.Successes != 2 || !slices.Equal(st.Addrs, addrs("198.51.100.2")) {
		t.Fatalf("after change: %+v", st)
	}
	t.Logf("change registered in %v", time.Since(start))
	if got := lookup(); got != "198.51.100.2:7000" {
		t.Fatalf("Lookup after change = %s", got)
	}
	if got := r.Status(); got.Successes != 2 || got.Registered.IsZero() {
		t.Fatalf("Status = %+v", got)
	}
	// Close removes the records; a second Close is harmless.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if got := lookup(); got != "" {
		t.Fatalf("Lookup after Close = %s", got)
	}
}

// TestRegistrarRefresh removes the records behind the Registrar's back and waits for the
// refresh to bring them back.
func TestRegistrarRefresh(t *testing.T) {
	key := testKey(t, "rock-key")
	s := startServer(t, key, nil)
	cfg := clientConfig(s.Addr(), &key)
	cfg.TTL = 2 * time.Second // refresh every second
	ctx := ctxT(t)
	onUpdate, ch := updates()
	r, err := NewRegistrar(cfg, Registration{Name: "r.rock.test", Port: 7000, Addrs: func() []netip.Addr { return addrs("192.0.2.7") }, OnUpdate: onUpdate})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	next(t, ch)
	if err := Deregister(ctx, cfg, "r.rock.test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the refresh to restore the records", func() bool {
		got, err := Lookup(ctx, cfg, "r.rock.test")
		return err == nil && len(got) == 1
	})
	// The server applies the update before the Registrar reads its answer and counts it.
	waitFor(t, "the Registrar to count the refresh", func() bool { return r.Status().Successes >= 2 })
}

// TestRegistrarRetries runs a Registrar whose key the server does not know: every attempt
// fails, it keeps retrying with backoff, and Close reports the failed removal.
func TestRegistrarRetries(t *testing.T) {
	key := testKey(t, "rock-key")
	s := startServer(t, key, nil)
	other := testKey(t, "other-key")
	cfg := clientConfig(s.Addr(), &other)
	onUpdate, ch := updates()
	r, err := NewRegistrar(cfg, Registration{Name: "r.rock.test", Port: 7000, Addrs: func() []netip.Addr { return addrs("192.0.2.7") }, OnUpdate: onUpdate})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		st := next(t, ch)
		var de *Error
		if !errors.As(st.Err, &de) || st.Attempts != i || st.Successes != 0 {
			t.Fatalf("attempt %d: %+v", i, st)
		}
	}
	if err := r.Close(); err == nil {
		t.Fatal("Close: removal with an unknown key succeeded")
	}
	if _, err := NewRegistrar(&Config{}, Registration{Name: "x.rock.test", Port: 1}); !errors.Is(err, ErrNoKey) {
		t.Fatalf("NewRegistrar without a key: %v", err)
	}
	if _, err := NewRegistrar(cfg, Registration{Name: "bad name", Port: 1}); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("NewRegistrar with a bad name: %v", err)
	}
}
