//go:build linux

package cli

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rockudp/rockudp/internal/testwait"
)

// meter consumes a stream: it hashes every byte, paces itself to rate bytes per second
// while throttled (so that a transfer lasts through the faults a test injects), and
// remembers the longest pause between two reads.
type meter struct {
	rate      int
	throttled atomic.Bool
	n         atomic.Int64
	h         hash.Hash

	mu      sync.Mutex
	last    time.Time
	gapFrom time.Time     // while measuring: only pauses ending after it count
	maxGap  time.Duration // longest pause since gapFrom
	done    chan struct{}
	err     error
}

func newMeter(rate int) *meter {
	m := &meter{rate: rate, h: sha256.New(), done: make(chan struct{})}
	m.throttled.Store(true)
	return m
}

// consume reads r to EOF in the background.
func (m *meter) consume(r io.Reader) {
	go func() {
		defer close(m.done)
		buf := make([]byte, 16<<10)
		start, startN := time.Now(), int64(0)
		for {
			n, err := r.Read(buf)
			now := time.Now()
			if n > 0 {
				m.h.Write(buf[:n])
				m.mu.Lock()
				if !m.last.IsZero() && !m.gapFrom.IsZero() && now.After(m.gapFrom) {
					m.maxGap = max(m.maxGap, now.Sub(m.last))
				}
				m.last = now
				m.mu.Unlock()
				total := m.n.Add(int64(n))
				if m.throttled.Load() {
					// Pace to rate, from the last time the pace was broken by a pause.
					due := start.Add(time.Duration(float64(total-startN) / float64(m.rate) * float64(time.Second)))
					if d := time.Until(due); d > 0 {
						time.Sleep(d)
					} else if d < -time.Second {
						start, startN = now, total
					}
				}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					m.err = err
				}
				return
			}
		}
	}()
}

// measureGaps starts measuring the longest pause between reads, from now.
func (m *meter) measureGaps() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gapFrom, m.maxGap = time.Now(), 0
}

// longestGap returns the longest pause between reads since measureGaps.
func (m *meter) longestGap() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.maxGap
}

// waitBytes waits until at least n bytes have arrived.
func (m *meter) waitBytes(t *testing.T, n int64, timeout time.Duration) {
	t.Helper()
	testwait.Within(t, timeout, fmt.Sprintf("%d bytes", n), func() error {
		if m.n.Load() >= n {
			return nil
		}
		select {
		case <-m.done:
			t.Fatalf("stream ended after %d bytes (err %v), before %d", m.n.Load(), m.err, n)
		default:
		}
		return fmt.Errorf("only %d so far", m.n.Load())
	})
}

// finish stops throttling and waits for the end of the stream.
func (m *meter) finish(t *testing.T, timeout time.Duration) (n int64, sum []byte) {
	t.Helper()
	m.throttled.Store(false)
	select {
	case <-m.done:
	case <-time.After(timeout):
		t.Fatalf("stream did not end within %v (%d bytes so far)", timeout, m.n.Load())
	}
	if m.err != nil {
		t.Fatalf("stream failed after %d bytes: %v", m.n.Load(), m.err)
	}
	return m.n.Load(), m.h.Sum(nil)
}
