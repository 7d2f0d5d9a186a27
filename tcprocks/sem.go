package tcprocks

import (
	"sync"
	"sync/atomic"
	"time"
)

// sem is a lock whose waiters can give up (deadline, Close). Taking a free sem costs one
// atomic operation, unlike a channel.
type sem struct {
	mu      sync.Mutex
	waiters atomic.Int32
	wake    chan struct{} // a token for one waiter, sent at unlock when someone waits
}

func newSem() *sem { return &sem{wake: make(chan struct{}, 1)} }

func (s *sem) tryLock() bool { return s.mu.TryLock() }

// lock waits without limit.
func (s *sem) lock() {
	s.lockOr(nil, nil, nil)
}

// lockOr waits until the sem is taken (true) or one of the channels fires (false).
func (s *sem) lockOr(timeout <-chan time.Time, b, c <-chan struct{}) bool {
	if s.mu.TryLock() {
		return true
	}
	s.waiters.Add(1)
	defer s.waiters.Add(-1)
	for {
		if s.mu.TryLock() {
			return true
		}
		select {
		case <-s.wake:
		case <-timeout:
			return false
		case <-b:
			return false
		case <-c:
			return false
		}
	}
}

func (s *sem) unlock() {
	s.mu.Unlock()
	if s.waiters.Load() > 0 {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}
