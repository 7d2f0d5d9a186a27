package tcprocks

import (
	"sync"

	"github.com/rockudp/rockudp/callbacks"
)

// subscriber is one event handler with its own ordered queue. A goroutine drains the queue
// while it is not empty and ends when it is; an idle rock runs none.
type subscriber struct {
	h       callbacks.Handler
	mu      sync.Mutex
	q       []callbacks.Event
	running bool
	gone    bool
}

// push queues e and starts a drain goroutine (owned by wg) if none runs.
func (s *subscriber) push(e callbacks.Event, wg *sync.WaitGroup) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		return
	}
	s.q = append(s.q, e)
	if !s.running {
		s.running = true
		wg.Go(s.drain)
	}
}

func (s *subscriber) drain() {
	for {
		s.mu.Lock()
		if len(s.q) == 0 || s.gone {
			s.q, s.running = nil, false
			s.mu.Unlock()
			return
		}
		e := s.q[0]
		s.q = s.q[1:]
		s.mu.Unlock()
		s.h.HandleEvent(e)
	}
}

func (s *subscriber) cancel() {
	s.mu.Lock()
	s.gone = true
	s.mu.Unlock()
}
