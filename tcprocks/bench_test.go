package tcprocks

import (
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/rockudp/rockudp/edp"
)

// benchPair returns a connected pair of the given kind ("rock" or "tcp").
func benchPair(b *testing.B, kind string) (c, s net.Conn) {
	b.Helper()
	if kind == "tcp" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		ch := make(chan net.Conn, 1)
		go func() {
			s, _ := ln.Accept()
			ch <- s
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		s = <-ch
		b.Cleanup(func() { c.Close(); s.Close() })
		return c, s
	}
	srvCfg, cliCfg := testConfigs(b)
	l := listen(b, srvCfg)
	return pair(b, l, l.Addr().String(), cliCfg)
}

var benchKinds = []string{"tcp", "rock"}

func BenchmarkThroughput(b *testing.B) {
	for _, size := range []int{100, 1 << 10, 16 << 10, 64 << 10} {
		for _, kind := range benchKinds {
			b.Run(fmt.Sprintf("%s/%d", kind, size), func(b *testing.B) {
				c, s := benchPair(b, kind)
				done := make(chan int64)
				go func() {
					n, _ := io.CopyBuffer(io.Discard, s, make([]byte, 64<<10))
					done <- n
				}()
				buf := make([]byte, size)
				b.SetBytes(int64(size))
				b.ResetTimer()
				for range b.N {
					if _, err := c.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				c.(interface{ CloseWrite() error }).CloseWrite()
				if n := <-done; n != int64(size)*int64(b.N) {
					b.Fatalf("received %d bytes", n)
				}
				b.StopTimer()
			})
		}
	}
}

func BenchmarkPingPong(b *testing.B) {
	for _, kind := range benchKinds {
		b.Run(kind, func(b *testing.B) {
			c, s := benchPair(b, kind)
			go func() {
				buf := make([]byte, 64)
				for {
					if _, err := io.ReadFull(s, buf); err != nil {
						return
					}
					if _, err := s.Write(buf); err != nil {
						return
					}
				}
			}()
			buf := make([]byte, 64)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
		})
	}
}

func BenchmarkDial(b *testing.B) {
	srvCfg, cliCfg := testConfigs(b)
	l := listen(b, srvCfg)
	addr := l.Addr().String()
	accepted := make(chan []*Conn, 1)
	go func() {
		var all []*Conn
		for {
			s, err := l.AcceptConn()
			if err != nil {
				accepted <- all
				return
			}
			all = append(all, s)
		}
	}()
	b.Cleanup(func() {
		l.Close()
		for _, s := range <-accepted {
			s.Close()
		}
	})
	b.Run("tcp", func(b *testing.B) {
		for range b.N {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			c.Close()
			b.StartTimer()
		}
	})
	for _, mode := range []string{"cold", "cached"} {
		b.Run("rock/"+mode, func(b *testing.B) {
			cfg := *cliCfg
			cfg.ProbeCache = edp.NewCache(time.Hour)
			ctx := context.Background()
			if mode == "cached" {
				c, err := Dial(ctx, "tcp", addr, &cfg)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			var conns []*Conn
			b.ResetTimer()
			for range b.N {
				if mode == "cold" {
					cfg.ProbeCache.Invalidate(addr)
				}
				c, err := Dial(ctx, "tcp", addr, &cfg)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				// Let the control channel's QUIC handshake finish in the background before the
				// next Dial: it is not part of Dial, but on two cores it would steal the CPU
				// from the next one.
				waitFor(b, "control channel", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.ch != nil })
				conns = append(conns, c)
				b.StartTimer()
			}
			b.StopTimer()
			for _, c := range conns {
				c.Close()
			}
		})
	}
}

// BenchmarkIdleRock reports the heap and goroutines one idle, connected rock costs (both ends
// in this process, control channel up, divided by two).
func BenchmarkIdleRock(b *testing.B) {
	const n = 50
	srvCfg, cliCfg := testConfigs(b)
	l := listen(b, srvCfg)
	var before, after runtime.MemStats
	for range b.N {
		runtime.GC()
		runtime.ReadMemStats(&before)
		g0 := runtime.NumGoroutine()
		var rocks []*Conn
		for range n {
			c, s := pair(b, l, l.Addr().String(), cliCfg)
			rocks = append(rocks, c, s)
		}
		for _, c := range rocks {
			waitFor(b, "control channel", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.ch != nil })
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(2*n), "heapB/rock")
		b.ReportMetric(float64(runtime.NumGoroutine()-g0)/(2*n), "goroutines/rock")
		for _, c := range rocks {
			c.Close()
		}
		for _, c := range rocks {
			waitDone(b, c)
		}
	}
}
