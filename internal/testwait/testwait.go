// Package testwait waits, in tests, for a condition instead of for a fixed time: it polls
// the condition, briefly at first and then less often, until it holds or a generous
// deadline passes. On a loaded machine the condition is met late, never missed.
package testwait

import (
	"testing"
	"time"
)

// Timeout is the deadline For gives a condition: generous, since it only matters when the
// test fails anyway.
const Timeout = 10 * time.Second

// For polls cond until it returns nil, failing the test after Timeout with what and cond's
// last error. It returns at once when cond holds from the start.
func For(tb testing.TB, what string, cond func() error) {
	tb.Helper()
	Within(tb, Timeout, what, cond)
}

// Within is For with its own deadline.
func Within(tb testing.TB, timeout time.Duration, what string, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	poll := time.Millisecond
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		<-t.C
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("waited %v for %s: %v", timeout, what, err)
		}
		poll = min(2*poll, 50*time.Millisecond)
		t.Reset(poll)
	}
}
