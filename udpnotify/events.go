package udpnotify

import (
	"sync"

	"github.com/rockudp/rockudp/callbacks"
)

// subscriber delivers a session's events to one handler, in order, from a goroutine of its
// own: a slow handler delays only itself, and no lock is held while it runs.
type subscriber struct {
	h    callbacks.Handler
	mu   sync.Mutex
	q    []callbacks.Event
	stop bool // no more events: deliver what is queued, then end
	wake chan struct{}
	done chan struct{}
}

func newSubscriber(h callbacks.Handler) *subscriber {
	s := &subscriber{h: h, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go s.run()
	return s
}

// push queues e; it never blocks.
func (s *subscriber) push(e callbacks.Event) {
	s.mu.Lock()
	if !s.stop {
		s.q = append(s.q, e)
	}
	s.mu.Unlock()
	s.poke()
}

// finish makes the goroutine end once the queue is empty. drop discards what is queued.
func (s *subscriber) finish(drop bool) {
	s.mu.Lock()
	s.stop = true
	if drop {
		s.q = nil
	}
	s.mu.Unlock()
	s.poke()
}

func (s *subscriber) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) run() {
	defer close(s.done)
	for {
		s.mu.Lock()
		q, stop := s.q, s.stop
		s.q = nil
		s.mu.Unlock()
		for _, e := range q {
			s.h.HandleEvent(e)
		}
		if len(q) == 0 {
			if stop {
				return
			}
			<-s.wake
		}
	}
}
