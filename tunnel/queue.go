package tunnel

import (
	"sync"
)

// qent describes one encoded frame in a queue buffer.
type qent struct {
	end int   // offset just past the frame
	at  int64 // clock (ns) when a Data frame was read from UDP; -1: a control frame, never expires
	n   int   // payload length of a Data frame
}

// queue holds the frames waiting for the rock, encoded back to back. The
// UDP readers append to it and never block; one writer takes everything
// queued at once (swapping buffers, no copy) and writes it to the rock with
// one Write. The byte bound covers the frames queued and the batch being
// written. Data frames older than maxAge are dropped when they would be
// written, and from the head when room is needed; when there is still no
// room, the new datagram is dropped (tail drop: what is queued keeps its
// order and contents).
type queue struct {
	mu      sync.Mutex
	buf     []byte // frames; buf[off:] is live
	ents    []qent // ents[eoff:] describe buf[off:]
	off     int
	eoff    int
	writing int // bytes of the batch the writer holds
	limit   int
	maxAge  int64 // ns; 0 keeps everything
	closed  bool

	spareBuf  []byte
	spareEnts []qent

	ready chan struct{} // one token: "there is something to write"
	st    *counters
}

func newQueue(limit int, maxAge int64, st *counters) *queue {
	return &queue{limit: limit, maxAge: maxAge, ready: make(chan struct{}, 1), st: st}
}

// used is the number of bytes counted against the bound. q.mu held.
func (q *queue) used() int { return len(q.buf) - q.off + q.writing }

// expired reports whether an entry enqueued at e.at is too old at now.
func (q *queue) expired(e qent, now int64) bool {
	return q.maxAge > 0 && e.at >= 0 && now-e.at > q.maxAge
}

// room makes room for n more bytes if it can, dropping expired Data frames
// from the head. q.mu held.
func (q *queue) room(n int, now int64) bool {
	if q.used()+n <= q.limit {
		return true
	}
	for q.eoff < len(q.ents) {
		e := q.ents[q.eoff]
		if !q.expired(e, now) {
			break
		}
		q.st.drop(DropTooOld, e.n)
		q.off = e.end
		q.eoff++
	}
	if q.off > len(q.buf)/2 {
		q.compact()
	}
	return q.used()+n <= q.limit
}

// compact moves the live frames to the front of buf. q.mu held.
func (q *queue) compact() {
	live := copy(q.buf, q.buf[q.off:])
	q.buf = q.buf[:live]
	ents := q.ents[q.eoff:]
	for i := range ents {
		ents[i].end -= q.off
	}
	q.ents = q.ents[:copy(q.ents, ents)]
	q.off, q.eoff = 0, 0
}

// appendControl queues a complete control frame (it never expires and is
// not subject to the bound: callers check room before opening flows).
// q.mu held.
func (q *queue) appendControl(frame []byte) {
	q.buf = append(q.buf, frame...)
	q.ents = append(q.ents, qent{end: len(q.buf), at: -1})
}

// appendData queues a Data frame. q.mu held; the caller checked room.
func (q *queue) appendData(flow uint32, now int64, payload []byte) {
	q.buf = AppendHeader(q.buf, FrameData, flow, uint32(now/1e6), len(payload))
	q.buf = append(q.buf, payload...)
	q.ents = append(q.ents, qent{end: len(q.buf), at: now, n: len(payload)})
}

// signal wakes the writer. Call after unlocking.
func (q *queue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take hands the writer every queued frame not expired at now, compacted
// into one buffer. It returns nil when nothing is queued. The writer must
// call release when it is done with the buffer.
func (q *queue) take(now int64) []byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.eoff == len(q.ents) || q.closed {
		return nil
	}
	buf, ents, first := q.buf, q.ents[q.eoff:], q.off
	q.buf, q.ents = q.spareBuf[:0], q.spareEnts[:0]
	q.spareBuf, q.spareEnts = buf, ents[:0]
	q.off, q.eoff = 0, 0
	dst, start := first, first
	for _, e := range ents {
		if q.expired(e, now) {
			q.st.drop(DropTooOld, e.n)
		} else {
			if dst != start {
				copy(buf[dst:], buf[start:e.end])
			}
			dst += e.end - start
		}
		start = e.end
	}
	q.writing = dst - first
	return buf[first:dst]
}

// release tells the queue that the writer is done with the batch from take.
func (q *queue) release() {
	q.mu.Lock()
	q.writing = 0
	q.mu.Unlock()
}

// queued returns the bytes counted against the bound.
func (q *queue) queued() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.used()
}

// close drops everything and makes take return nil from now on.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.buf, q.ents, q.off, q.eoff = nil, nil, 0, 0
	q.mu.Unlock()
	q.signal()
}
