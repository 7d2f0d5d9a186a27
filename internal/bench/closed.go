package bench

import (
	"sync"
	"time"

	"github.com/rockudp/rockudp/callbacks"
)

// closeWatch counts the Closed events of the rocks it is the handler of (tcprocks.Config's
// Handler), so that a section can wait until every rock it made has finished lingering and
// left no goroutine behind.
type closeWatch struct {
	mu      sync.Mutex
	made    int
	closed  int
	changed chan struct{}
}

func newCloseWatch() *closeWatch { return &closeWatch{changed: make(chan struct{})} }

// HandleEvent counts Closed events.
func (w *closeWatch) HandleEvent(e callbacks.Event) {
	if e.Kind != callbacks.Closed {
		return
	}
	w.mu.Lock()
	w.closed++
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
}

// add counts n more rocks made.
func (w *closeWatch) add(n int) {
	w.mu.Lock()
	w.made += n
	w.mu.Unlock()
}

// wait waits until every rock made has closed, for at most timeout; it reports whether they
// all did.
func (w *closeWatch) wait(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		w.mu.Lock()
		done, ch := w.closed >= w.made, w.changed
		w.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-ch:
		case <-t.C:
			return false
		}
	}
}
