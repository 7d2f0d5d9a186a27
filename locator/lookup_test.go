package locator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rockudp/rockudp/callbacks"
)

// fakeServer answers every query with what answer returns, over UDP on 127.0.0.1:0.
func fakeServer(t *testing.T, answer func(q dns.Question) []dns.RR) net.Addr {
	return serveUDP(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = answer(r.Question[0])
		w.WriteMsg(m)
	})
}

// serveUDP runs a miekg/dns server with handler h (accepting every message, updates
// included) on 127.0.0.1:0 until the test ends.
func serveUDP(t *testing.T, h dns.HandlerFunc) net.Addr {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: func() { close(started) },
		MsgAcceptFunc: func(dns.Header) dns.MsgAcceptAction { return dns.MsgAccept }}
	done := make(chan struct{})
	go func() { defer close(done); srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { srv.Shutdown(); <-done })
	return pc.LocalAddr()
}

func rr(t *testing.T, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestLookupDistrustsAnswers serves answers a lying or broken server could give and checks
// that Lookup keeps only what was asked for.
func TestLookupDistrustsAnswers(t *testing.T) {
	addr := fakeServer(t, func(q dns.Question) []dns.RR {
		switch {
		case q.Qtype == dns.TypeSRV && q.Name == "_rockudp._tcp.n.rock.test.":
			return []dns.RR{
				rr(t, "_rockudp._tcp.n.rock.test. 30 IN SRV 10 0 7010 b.rock.test."),
				rr(t, "_rockudp._tcp.n.rock.test. 30 IN SRV 0 0 7000 a.rock.test."),
				rr(t, "_rockudp._tcp.n.rock.test. 30 IN SRV 0 0 7001 ."),              // "no service"
				rr(t, "_rockudp._tcp.n.rock.test. 30 IN SRV 0 0 0 c.rock.test."),      // port 0
				rr(t, "_rockudp._tcp.other.rock.test. 30 IN SRV 0 0 7666 evil.test."), // wrong owner
				rr(t, "_rockudp._tcp.n.rock.test. 30 IN A 192.0.2.66"),                // wrong type
			}
		case q.Qtype == dns.TypeA && q.Name == "a.rock.test.":
			return []dns.RR{rr(t, "a.rock.test. 30 IN A 192.0.2.1"), rr(t, "a.rock.test. 30 IN A 224.0.0.1"),
				rr(t, "a.rock.test. 30 IN A 0.0.0.0"), rr(t, "evil.rock.test. 30 IN A 192.0.2.66")}
		case q.Qtype == dns.TypeAAAA && q.Name == "a.rock.test.":
			return []dns.RR{rr(t, "a.rock.test. 30 IN AAAA 2001:db8::1"), rr(t, "a.rock.test. 30 IN AAAA ff02::1")}
		case q.Qtype == dns.TypeA && q.Name == "b.rock.test.":
			var rrs []dns.RR
			for i := range 40 {
				rrs = append(rrs, rr(t, fmt.Sprintf("b.rock.test. 30 IN A 198.51.100.%d", i+1)))
			}
			return rrs
		case q.Qtype == dns.TypeA && q.Name == "plain.rock.test.":
			return []dns.RR{rr(t, "plain.rock.test. 30 IN A 192.0.2.9")}
		}
		return nil
	})
	ctx := ctxT(t)
	cfg := &Config{Server: addr.String(), MaxRecords: 5}
	got, err := Lookup(ctx, cfg, "n.rock.test")
	if err != nil {
		t.Fatal(err)
	}
	want := "[2001:db8::1]:7000 192.0.2.1:7000 198.51.100.1:7010 198.51.100.2:7010 198.51.100.3:7010"
	if strings.Join(got, " ") != want {
		t.Fatalf("Lookup = %v\nwant %s", got, want)
	}
	// No SRV: the name's own addresses with the default port, or nothing without one.
	if got, err := Lookup(ctx, cfg, "plain.rock.test"); err != nil || len(got) != 0 {
		t.Fatalf("Lookup without default port = %v, %v", got, err)
	}
	cfg.DefaultPort = 9000
	if got, err := Lookup(ctx, cfg, "plain.rock.test"); err != nil || strings.Join(got, " ") != "192.0.2.9:9000" {
		t.Fatalf("Lookup with default port = %v, %v", got, err)
	}
	if _, err := Lookup(ctx, cfg, "bad name.rock.test"); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("Lookup(bad name) = %v", err)
	}
}

func TestOrderSRV(t *testing.T) {
	srv := func(prio, weight uint16, target string) *dns.SRV {
		return &dns.SRV{Priority: prio, Weight: weight, Target: target}
	}
	names := func(s []*dns.SRV) string {
		var out []string
		for _, x := range s {
			out = append(out, x.Target)
		}
		return strings.Join(out, " ")
	}
	in := []*dns.SRV{srv(20, 0, "late"), srv(10, 0, "zero"), srv(10, 50, "heavy"), srv(10, 1, "light")}
	// The smallest draw picks weight 0 first; the largest picks the last running sum.
	if got := names(orderSRV(append([]*dns.SRV(nil), in...), func(int) int { return 0 })); got != "zero heavy light late" {
		t.Fatalf("draw 0: %s", got)
	}
	if got := names(orderSRV(append([]*dns.SRV(nil), in...), func(n int) int { return n - 1 })); got != "light heavy zero late" {
		t.Fatalf("draw max: %s", got)
	}
	// With real randomness the heavy record goes first most of the time.
	heavy := 0
	for range 1000 {
		if orderSRV(append([]*dns.SRV(nil), in...), randIntN)[0].Target == "heavy" {
			heavy++
		}
	}
	if heavy < 900 || heavy == 1000 {
		t.Fatalf("heavy first %d times in 1000, want about 960", heavy)
	}
}

// TestLookupTCPFallback looks up a name whose answer does not fit in a UDP reply.
func TestLookupTCPFallback(t *testing.T) {
	key := testKey(t, "rock-key")
	s := startServer(t, key, &ServerConfig{Limits: Limits{RecordsPerName: 64}, UpdateRecords: 128})
	cfg := clientConfig(s.Addr(), &key)
	cfg.MaxRecords = 64
	var many []string
	for i := range 60 {
		many = append(many, fmt.Sprintf("2001:db8::%x", i+1))
	}
	ctx := ctxT(t)
	if err := Register(ctx, cfg, "big.rock.test", 7000, addrs(many...)); err != nil {
		t.Fatal(err)
	}
	if r := ask(t, "udp", s.Addr(), "big.rock.test.", dns.TypeAAAA); !r.Truncated {
		t.Fatalf("UDP answer not truncated: %d answers", len(r.Answer))
	}
	got, err := Lookup(ctx, cfg, "big.rock.test")
	if err != nil || len(got) != 60 {
		t.Fatalf("Lookup = %d addresses, %v", len(got), err)
	}
}

func TestLookupTimeout(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cfg := &Config{Server: pc.LocalAddr().String(), Timeout: 100 * time.Millisecond}
	_, err = Lookup(context.Background(), cfg, "n.rock.test")
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) || !strings.HasPrefix(err.Error(), "locator: query") {
		t.Fatalf("Lookup from a silent server: %v", err)
	}
	// The context bounds the whole lookup and its cancellation is reported as such.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	cfg.Timeout = time.Hour
	if _, err = Lookup(ctx, cfg, "n.rock.test"); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Lookup with a context deadline: %v", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	if _, err = Lookup(ctx, cfg, "n.rock.test"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lookup with a cancelled context: %v", err)
	}
}

func TestLocator(t *testing.T) {
	key := testKey(t, "rock-key")
	s := startServer(t, key, nil)
	cfg := clientConfig(s.Addr(), &key)
	ctx := ctxT(t)
	if err := Register(ctx, cfg, "peer.rock.test", 7000, addrs("192.0.2.1", "2001:db8::1")); err != nil {
		t.Fatal(err)
	}
	if err := Register(ctx, cfg, "peer2.rock.test", 7000, addrs("192.0.2.1", "192.0.2.2")); err != nil {
		t.Fatal(err)
	}
	var l callbacks.Locator = NewLocator(cfg, "peer.rock.test", "peer2.rock.test", "gone.rock.test")
	got, err := l.Locate(ctx, callbacks.Query{Dialed: "192.0.2.1:7000"})
	if err != nil || strings.Join(got, " ") != "[2001:db8::1]:7000 192.0.2.1:7000 192.0.2.2:7000" {
		t.Fatalf("Locate = %v, %v", got, err)
	}
	byID := NewLocatorFunc(cfg, func(q callbacks.Query) string {
		if q.ID[0] == 1 {
			return "peer2.rock.test"
		}
		return ""
	})
	if got, err := byID.Locate(ctx, callbacks.Query{ID: [16]byte{1}}); err != nil || len(got) != 2 {
		t.Fatalf("Locate(1) = %v, %v", got, err)
	}
	if got, err := byID.Locate(ctx, callbacks.Query{}); err != nil || got != nil {
		t.Fatalf("Locate(unknown) = %v, %v", got, err)
	}
	// The name the peer announced comes first, then the configured ones; a name given twice
	// is asked once.
	announced := NewLocator(cfg, "peer2.rock.test")
	got, err = announced.Locate(ctx, callbacks.Query{Name: "PEER.rock.test"})
	if err != nil || strings.Join(got, " ") != "[2001:db8::1]:7000 192.0.2.1:7000 192.0.2.2:7000" {
		t.Fatalf("Locate(announced) = %v, %v", got, err)
	}
	if got, err := announced.Locate(ctx, callbacks.Query{Name: "peer2.rock.test."}); err != nil || len(got) != 2 {
		t.Fatalf("Locate(announced = configured) = %v, %v", got, err)
	}
	// Without configured names, the announcement alone; a malformed one is an error.
	learn := NewLocator(cfg)
	if got, err := learn.Locate(ctx, callbacks.Query{Name: "peer2.rock.test"}); err != nil || strings.Join(got, " ") != "192.0.2.1:7000 192.0.2.2:7000" {
		t.Fatalf("Locate(announced only) = %v, %v", got, err)
	}
	if got, err := learn.Locate(ctx, callbacks.Query{}); err != nil || got != nil {
		t.Fatalf("Locate(nothing announced) = %v, %v", got, err)
	}
	if _, err := learn.Locate(ctx, callbacks.Query{Name: "bad name!"}); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("Locate(malformed announcement) = %v, want ErrInvalidName", err)
	}
	// All lookups failing is an error; the rock then keeps its other addresses.
	bad := NewLocator(&Config{Server: "127.0.0.1:1", Timeout: time.Second}, "peer.rock.test")
	if _, err := bad.Locate(ctx, callbacks.Query{}); err == nil {
		t.Fatal("Locate against no server succeeded")
	}
}

// TestRegisterRejectsUnsignedReply answers a signed update with an unsigned NOERROR, as a
// spoofer could: miekg/dns's client accepts that, Register must not.
func TestRegisterRejectsUnsignedReply(t *testing.T) {
	other := testKey(t, "rock-key")
	for _, tc := range []struct {
		name string
		sign *Key // the key the fake server signs with (nil: unsigned)
	}{{"unsigned", nil}, {"signed with another secret", &other}} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serveUDP(t, func(w dns.ResponseWriter, r *dns.Msg) {
				m := new(dns.Msg)
				m.SetReply(r)
				if tc.sign != nil {
					m.SetTsig(tc.sign.Name, dns.HmacSHA256, 300, time.Now().Unix())
					b, _, err := dns.TsigGenerate(m, tc.sign.Secret, "", false)
					if err != nil {
						t.Error(err)
					}
					w.Write(b)
					return
				}
				w.WriteMsg(m)
			})
			key := testKey(t, "rock-key")
			err := Register(ctxT(t), &Config{Server: addr.String(), Zone: testZone, Key: &key}, "n.rock.test", 7000, addrs("192.0.2.1"))
			if err == nil {
				t.Fatal("Register accepted a reply not signed with its key")
			}
			if tc.sign == nil && !errors.Is(err, ErrUnsigned) {
				t.Fatalf("err = %v, want ErrUnsigned", err)
			}
			t.Log(err)
		})
	}
}
