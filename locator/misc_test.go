package locator

import (
	"fmt"
	"net"
	"os"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// TestConcurrent registers and looks up many names at once (run with -race).
func TestConcurrent(t *testing.T) {
	key := testKey(t, "rock-key")
	s := startServer(t, key, &ServerConfig{File: t.TempDir() + "/zone", Logger: nil})
	cfg := clientConfig(s.Addr(), &key)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 8 {
		wg.Go(func() {
			name := fmt.Sprintf("n%d.rock.test", i)
			for j := range 10 {
				if err := Register(ctx, cfg, name, uint16(7000+j), addrs(fmt.Sprintf("192.0.2.%d", j+1))); err != nil {
					errs <- err
					return
				}
				got, err := Lookup(ctx, cfg, name)
				if err != nil || len(got) != 1 || got[0] != fmt.Sprintf("192.0.2.%d:%d", j+1, 7000+j) {
					errs <- fmt.Errorf("%s: Lookup = %v, %v", name, got, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s.Serial() != 1+80 {
		t.Fatalf("serial %d after 80 updates", s.Serial())
	}
}

// TestZeroConfig starts a server with a nil config: the default zone, no keys, so every
// update is refused.
func TestZeroConfig(t *testing.T) {
	s, err := Listen("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Zone() != DefaultZone {
		t.Fatalf("zone %s", s.Zone())
	}
	r := ask(t, "tcp", s.Addr(), "ns."+DefaultZone, dns.TypeA)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "127.0.0.1" {
		t.Fatalf("ns A: %v", r)
	}
	key := testKey(t, "k")
	err = Register(ctxT(t), &Config{Server: s.Addr().String(), Key: &key}, "x."+DefaultZone, 1, addrs("192.0.2.1"))
	if err == nil {
		t.Fatal("update accepted by a server without keys")
	}
	if c := (*Config)(nil).withDefaults(); c.Server != DefaultServer || c.TTL != DefaultTTL || c.Service != DefaultService {
		t.Fatalf("defaults %+v", c)
	}
}

func TestNewServerErrors(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc.Close()
	if _, err := NewServer(pc, nil, nil); err == nil {
		t.Fatal("NewServer on a closed socket succeeded")
	}
	if _, err := NewServer(nil, nil, nil); err == nil {
		t.Fatal("NewServer without sockets succeeded")
	}
	if _, err := Listen("127.0.0.1:0", &ServerConfig{Zone: "bad zone"}); err == nil {
		t.Fatal("Listen with a bad zone succeeded")
	}
	if _, err := Listen("127.0.0.1:0", &ServerConfig{Keys: []Key{{Name: "k", Secret: "short"}}}); err == nil {
		t.Fatal("Listen with a bad key succeeded")
	}
}

// TestIPv6Loopback serves and registers over ::1.
func TestIPv6Loopback(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("IPv6 loopback: %v", err)
		}
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln.Close()
	key := testKey(t, "rock-key")
	s, err := Listen("[::1]:0", &ServerConfig{Zone: testZone, Keys: []Key{key}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cfg := clientConfig(s.Addr(), &key)
	if err := Register(ctxT(t), cfg, "v6.rock.test", 7000, addrs("2001:db8::6")); err != nil {
		t.Fatal(err)
	}
	got, err := Lookup(ctxT(t), cfg, "v6.rock.test")
	if err != nil || len(got) != 1 || got[0] != "[2001:db8::6]:7000" {
		t.Fatalf("Lookup = %v, %v", got, err)
	}
	if r := ask(t, "udp", s.Addr(), "ns.rock.test.", dns.TypeAAAA); len(r.Answer) != 1 {
		t.Fatalf("ns AAAA: %v", r)
	}
}
