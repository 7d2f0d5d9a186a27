package udpnotify

import (
	"sync"
	"time"
)

// deadline is a settable deadline whose channel is closed when it passes; setting it again
// applies to waits already under way (the shape of net.Pipe's deadlines).
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	expiry chan struct{} // closed when the deadline has passed
}

func newDeadline() *deadline {
	return &deadline{expiry: make(chan struct{})}
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.expiry // the timer fired: wait until it has closed the channel
	}
	d.timer = nil
	expired := isClosed(d.expiry)
	if t.IsZero() {
		if expired {
			d.expiry = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if expired {
			d.expiry = make(chan struct{})
		}
		ch := d.expiry
		d.timer = time.AfterFunc(dur, func() { close(ch) })
		return
	}
	if !expired {
		close(d.expiry)
	}
}

// wait returns a channel that is closed when the deadline passes.
func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.expiry
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
