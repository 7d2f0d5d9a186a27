package control

import (
	"context"
	"runtime"
	"testing"
)

// BenchmarkDial measures channel establishment on loopback: QUIC handshake
// plus channel binding, from Dial until both ends are verified.
func BenchmarkDial(b *testing.B) {
	s, c := newServer(b, nil), newClient(b)
	ctx := context.Background()
	accepted := make(chan *Channel)
	go func() {
		for {
			ch, err := s.Accept(ctx)
			if err != nil {
				close(accepted)
				return
			}
			accepted <- ch
		}
	}()
	b.ResetTimer()
	for b.Loop() {
		ch, err := c.Dial(ctx, s.Addr(), testID, testKey)
		if err != nil {
			b.Fatal(err)
		}
		sch := <-accepted
		ch.Close()
		sch.Close()
	}
	b.StopTimer()
	s.Close()
	for range accepted {
	}
}

// BenchmarkHeartbeatSend measures the cost of sending one heartbeat datagram.
func BenchmarkHeartbeatSend(b *testing.B) {
	s, c := newServer(b, nil), newClient(b)
	cch, _ := pair(b, s, c)
	var buf [HeartbeatLen]byte
	b.ReportAllocs()
	i := uint64(0)
	for b.Loop() {
		i++
		cch.sendHeartbeat(buf[:0], i)
	}
}

// BenchmarkIdleChannels opens b.N started channel pairs (both ends in this
// process, default policy) and reports the heap, stack and goroutines each
// pair costs once idle.
func BenchmarkIdleChannels(b *testing.B) {
	s, c := newServer(b, &ServerConfig{MaxPending: 1024}), newClient(b)
	before := memStats()
	g0 := runtime.NumGoroutine()
	pairs := make([][2]*Channel, 0, b.N)
	for range b.N {
		cch, sch := pair(b, s, c)
		cch.Start(Heartbeat{})
		sch.Start(Heartbeat{})
		pairs = append(pairs, [2]*Channel{cch, sch})
	}
	after := memStats()
	n := float64(b.N)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n/1024, "heapKiB/pair")
	b.ReportMetric(float64(after.StackInuse-before.StackInuse)/n/1024, "stackKiB/pair")
	b.ReportMetric(float64(runtime.NumGoroutine()-g0)/n, "goroutines/pair")
	runtime.KeepAlive(pairs)
}

func memStats() runtime.MemStats {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m
}

// BenchmarkAck measures Ack in a tight loop (the rate limiter's fast path).
func BenchmarkAck(b *testing.B) {
	s, c := newServer(b, nil), newClient(b)
	cch, sch := pair(b, s, c)
	cch.Start(Heartbeat{})
	sch.Start(Heartbeat{})
	b.ReportAllocs()
	i := uint64(0)
	for b.Loop() {
		i++
		if err := cch.Ack(i); err != nil {
			b.Fatal(err)
		}
	}
}
