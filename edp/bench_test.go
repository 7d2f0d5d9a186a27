package edp

import (
	"context"
	"io"
	"net"
	"testing"
)

// Run with a bounded count, e.g. -benchtime=2000x: every op opens one or two TCP
// connections and loopback ephemeral ports are finite.

func BenchmarkDialPlainTCP(b *testing.B) {
	srv := startPlain(b, func(c *net.TCPConn) { io.Copy(io.Discard, c); c.Close() })
	addr := srv.ln.Addr().String()
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.ReportMetric(1, "connects/op")
	b.ReportMetric(0, "rtts/op")
}

// BenchmarkDialPlainTCPRoundTrip is a plain connect plus one request/response
// round trip: what a cached enhanced Dial costs on the wire.
func BenchmarkDialPlainTCPRoundTrip(b *testing.B) {
	srv := startPlain(b, func(c *net.TCPConn) { io.Copy(c, c); c.Close() })
	addr := srv.ln.Addr().String()
	buf := make([]byte, 1)
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.Write(buf)
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.ReportMetric(1, "connects/op")
	b.ReportMetric(1, "rtts/op")
}

func benchEDP(b *testing.B, cache *Cache) {
	enh := Enhancement{Name: "rocks", Version: 1,
		Hello: func(Role, []byte) ([]byte, any, error) { return make([]byte, 32), nil, nil }}
	srv := startApp(b, &Config{Enhancements: []Enhancement{enh}}, func(c *Conn) { io.Copy(io.Discard, c); c.Close() })
	cfg := &Config{Enhancements: []Enhancement{enh}, Cache: cache}
	addr := srv.addr()
	ctx := context.Background()
	var connects, rtts int
	b.ReportAllocs()
	for b.Loop() {
		c, err := Dial(ctx, "tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if !c.Result().Enhanced {
			b.Fatalf("not enhanced: %+v", c.Result())
		}
		connects += c.connects
		rtts += c.roundTrips
		c.Close()
	}
	b.ReportMetric(float64(connects)/float64(b.N), "connects/op")
	b.ReportMetric(float64(rtts)/float64(b.N), "rtts/op")
}

// BenchmarkDialEDPCold probes on every Dial: two connects, two round trips.
func BenchmarkDialEDPCold(b *testing.B) { benchEDP(b, nil) }

// BenchmarkDialEDPCached skips the probe: one connect, one round trip.
func BenchmarkDialEDPCached(b *testing.B) { benchEDP(b, NewCache(0)) }
