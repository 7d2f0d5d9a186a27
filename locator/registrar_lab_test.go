//go:build linux

package locator

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/rockudp/rockudp/test/netlab"
)

// TestRegistrarFollowsHost runs a Registrar without Registration.Addrs inside a lab
// namespace (root; CI=true fails without): it publishes the namespace's address, and when the
// address changes it registers the new one at once (the refresh is an hour away), through its
// network monitor alone. The DNS server runs in the test's own namespace, on loopback: the
// Registrar's monitor watches the namespace it was created in, its updates go out from the
// process's namespace.
func TestRegistrarFollowsHost(t *testing.T) {
	lab := netlab.New(t)
	r, h := lab.Router("r"), lab.Host("h")
	link := lab.Connect(h, r, netip.MustParsePrefix("192.0.2.0/24"))
	key := testKey(t, "rock-key")
	s := startServer(t, key, nil)
	cfg := clientConfig(s.Addr(), &key)
	ctx := ctxT(t)
	onUpdate, ch := updates()
	var reg *Registrar
	err := h.Do(func() (err error) {
		reg, err = NewRegistrar(cfg, Registration{Name: "moving.rock.test", Port: 7000, Refresh: time.Hour, OnUpdate: onUpdate})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if st := next(t, ch); st.Err != nil || !slices.Equal(st.Addrs, addrs("192.0.2.2")) {
		t.Fatalf("first registration: %+v (want the namespace's 192.0.2.2 only)", st)
	}
	lookup := func() string {
		got, err := Lookup(ctx, cfg, "moving.rock.test")
		if err != nil {
			t.Fatal(err)
		}
		return slicesJoin(got)
	}
	if got := lookup(); got != "192.0.2.2:7000" {
		t.Fatalf("Lookup = %q", got)
	}
	start := time.Now()
	if err := link.ChangeAddr(netip.MustParsePrefix("192.0.2.2/24"), netip.MustParsePrefix("192.0.2.77/24")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new address in the DNS", func() bool { return lookup() == "192.0.2.77:7000" })
	t.Logf("address change registered %v after the lab changed the address", time.Since(start))
	// The server applied the update before the Registrar read its answer: wait for that.
	waitFor(t, "the Registrar to record the update", func() bool {
		st := reg.Status()
		return st.Successes >= 2 || st.Err != nil
	})
	if st := reg.Status(); st.Successes != 2 || st.Err != nil {
		// The removal of the old address alone (before the new one came) must not have
		// removed the name: one registration at start, one for the new address.
		t.Fatalf("status after the change: %+v, want exactly 2 successful registrations", st)
	}
	// The link going down leaves no usable address: the records stay.
	if err := link.Down(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Up() })
	time.Sleep(200 * time.Millisecond) // the monitor reacts within milliseconds; give it the chance to misbehave
	if got := lookup(); got != "192.0.2.77:7000" {
		t.Fatalf("Lookup with the link down = %q, want the last address kept", got)
	}
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	if got := lookup(); got != "" {
		t.Fatalf("Lookup after Close = %q", got)
	}
}
