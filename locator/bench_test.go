package locator

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"
)

// benchTargets are the servers to benchmark against: the embedded one in memory, the
// embedded one with a zone file (written and synced at every change), and BIND 9.
var benchTargets = []string{"embedded", "embedded-file", "bind"}

// benchTarget starts the server called name and returns a Config for it.
func benchTarget(b *testing.B, key Key, name string) *Config {
	quiet := slog.New(slog.DiscardHandler)
	switch name {
	case "embedded":
		return clientConfig(startServer(b, key, &ServerConfig{Logger: quiet}).Addr(), &key)
	case "embedded-file":
		file := filepath.Join(b.TempDir(), "zone")
		return clientConfig(startServer(b, key, &ServerConfig{Logger: quiet, File: file}).Addr(), &key)
	}
	n := startNamed(b, 0, key, primaryZone(b, b.TempDir(), key))
	return &Config{Server: n.addr.String(), Zone: testZone, Key: &key, Timeout: 5 * time.Second}
}

// BenchmarkRegister measures one signed update (replace A, AAAA and SRV) and its reply.
func BenchmarkRegister(b *testing.B) {
	key := testKey(b, "rock-key")
	for _, name := range benchTargets {
		b.Run(name, func(b *testing.B) {
			cfg := benchTarget(b, key, name)
			ctx := ctxT(b)
			b.ResetTimer()
			for i := range b.N {
				if err := Register(ctx, cfg, "bench.rock.test", 7000, addrs(fmt.Sprintf("192.0.2.%d", i%200+1), "2001:db8::1")); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLookup measures a Lookup of a registered name (SRV, then A and AAAA unless the
// server sent them as additional records).
func BenchmarkLookup(b *testing.B) {
	key := testKey(b, "rock-key")
	for _, name := range benchTargets {
		b.Run(name, func(b *testing.B) {
			cfg := benchTarget(b, key, name)
			ctx := ctxT(b)
			if err := Register(ctx, cfg, "bench.rock.test", 7000, addrs("192.0.2.1", "2001:db8::1")); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				got, err := Lookup(ctx, cfg, "bench.rock.test")
				if err != nil || len(got) != 2 {
					b.Fatal(got, err)
				}
			}
		})
	}
}
