package main

import (
	"sync"
	"time"

	"github.com/rockudp/rockudp/callbacks"
)

// rockTracker knows which rocks of this process have not finished closing, so that a
// command can let their graceful closes complete before it exits.
type rockTracker struct {
	mu     sync.Mutex
	live   map[[16]byte]bool
	closed map[[16]byte]bool // Closed seen before add (a rock that ended at once)
	idle   *sync.Cond
	m      *metrics // nil: no --metrics
}

func newRockTracker() *rockTracker {
	t := &rockTracker{live: map[[16]byte]bool{}, closed: map[[16]byte]bool{}}
	t.idle = sync.NewCond(&t.mu)
	return t
}

// add records a new rock (id is zero for plain TCP, which has nothing to wait for).
func (t *rockTracker) add(id [16]byte) {
	t.m.opened(id)
	if id == ([16]byte{}) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed[id] {
		delete(t.closed, id)
		return
	}
	t.live[id] = true
}

// HandleEvent removes a rock once it has closed.
func (t *rockTracker) HandleEvent(e callbacks.Event) {
	t.m.HandleEvent(e)
	if e.Kind != callbacks.Closed {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.live[e.ID] {
		delete(t.live, e.ID)
		t.idle.Broadcast()
	} else {
		t.closed[e.ID] = true
	}
}

// wait blocks until every rock has closed or d has passed, and returns how many are
// still closing.
func (t *rockTracker) wait(d time.Duration) int {
	timer := time.AfterFunc(d, func() {
		t.mu.Lock()
		t.idle.Broadcast()
		t.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(d)
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.live) > 0 && time.Now().Before(deadline) {
		t.idle.Wait()
	}
	return len(t.live)
}

// handlers fans one rock's events out to several handlers, in order.
type handlers []callbacks.Handler

func (hs handlers) HandleEvent(e callbacks.Event) {
	for _, h := range hs {
		h.HandleEvent(e)
	}
}
