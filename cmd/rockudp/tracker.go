package main

import (
	"bytes"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/tcprocks"
)

// rockTracker knows the rocks of this process that have not finished closing: so that
// a command can let their graceful closes complete before it exits, and so that
// "rockudp status" can list them.
type rockTracker struct {
	mu     sync.Mutex
	live   map[[16]byte]*tcprocks.Conn
	closed map[[16]byte]bool // Closed seen before add (a rock that ended at once)
	idle   *sync.Cond
	m      *metrics // nil: no --metrics
}

func newRockTracker() *rockTracker {
	t := &rockTracker{live: map[[16]byte]*tcprocks.Conn{}, closed: map[[16]byte]bool{}}
	t.idle = sync.NewCond(&t.mu)
	return t
}

// add records a new connection; plain TCP (ID zero) has nothing to wait for and is not
// listed.
func (t *rockTracker) add(c *tcprocks.Conn) {
	id := c.ID()
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
	t.live[id] = c
}

// HandleEvent removes a rock once it has closed.
func (t *rockTracker) HandleEvent(e callbacks.Event) {
	t.m.HandleEvent(e)
	if e.Kind != callbacks.Closed {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.live[e.ID] != nil {
		delete(t.live, e.ID)
		t.idle.Broadcast()
	} else {
		t.closed[e.ID] = true
	}
}

// conns returns the live rocks, in the order of their IDs.
func (t *rockTracker) conns() []*tcprocks.Conn {
	t.mu.Lock()
	out := make([]*tcprocks.Conn, 0, len(t.live))
	for _, c := range t.live {
		out = append(out, c)
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b *tcprocks.Conn) int {
		ia, ib := a.ID(), b.ID()
		return bytes.Compare(ia[:], ib[:])
	})
	return out
}

// statuses returns what "rockudp status" shows of every live rock, in the order of
// their IDs.
func (t *rockTracker) statuses() []rockStatus {
	cs := t.conns()
	out := make([]rockStatus, len(cs))
	for i, c := range cs {
		out[i] = statusOf(c.Stats())
	}
	return out
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

// startStatusFor answers "rockudp status" for this process, a command ("serve") with a
// detail ("ADDR -> SERVICE"), listing tr's rocks; stop is never nil.
func startStatusFor(tr *rockTracker, command, detail string, log *slog.Logger) (stop func()) {
	started := time.Now()
	return startStatusOrWarn(func() processStatus {
		return processStatus{PID: os.Getpid(), Command: command, Detail: detail, Started: started, Rocks: tr.statuses()}
	}, log)
}
