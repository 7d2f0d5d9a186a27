package tunnel

import (
	"net"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// frames parses a batch taken from a queue.
func frames(t *testing.T, b []byte) []Frame {
	t.Helper()
	var fs []Frame
	for len(b) > 0 {
		f, n, err := ParseFrame(b)
		if err != nil {
			t.Fatalf("batch does not parse: %v", err)
		}
		fs = append(fs, f)
		b = b[n:]
	}
	return fs
}

func TestQueueMaxAge(t *testing.T) {
	var st counters
	ms := int64(time.Millisecond)
	q := newQueue(1<<20, 100*ms, &st)
	q.mu.Lock()
	q.appendControl(AppendHeader(nil, FrameOpen, 1, 0, 0))
	q.appendData(1, 0, []byte("old"))
	q.appendData(1, 50*ms, []byte("middle"))
	q.appendData(1, 120*ms, []byte("new"))
	q.mu.Unlock()
	// At 160 ms, "old" (160 ms) is too old; "middle" (110 ms) too; "new" is fine.
	fs := frames(t, q.take(160*ms))
	q.release()
	if len(fs) != 2 || fs[0].Type != FrameOpen || string(fs[1].Payload) != "new" || fs[1].Time != 120 {
		t.Fatalf("batch: %+v", fs)
	}
	if st.drops[DropTooOld].Load() != 2 || st.droppedBytes[DropTooOld].Load() != 9 {
		t.Fatalf("too-old drops %d (%d bytes)", st.drops[DropTooOld].Load(), st.droppedBytes[DropTooOld].Load())
	}
	if q.take(1000*ms) != nil || q.queued() != 0 {
		t.Fatal("queue not empty")
	}
}

func TestQueueKeepAll(t *testing.T) {
	var st counters
	q := newQueue(1<<20, 0, &st)
	q.mu.Lock()
	for i := range 10 {
		q.appendData(1, int64(i), []byte{byte(i)})
	}
	q.mu.Unlock()
	fs := frames(t, q.take(int64(time.Hour)))
	q.release()
	if len(fs) != 10 || st.drops[DropTooOld].Load() != 0 {
		t.Fatalf("max-age 0 dropped: %d frames left", len(fs))
	}
}

func TestQueueBound(t *testing.T) {
	var st counters
	ms := int64(time.Millisecond)
	payload := make([]byte, 989) // 1000-byte frames
	q := newQueue(10_000, 100*ms, &st)
	q.mu.Lock()
	n := 0
	for q.room(1000, 0) {
		q.appendData(1, 0, payload)
		n++
	}
	if n != 10 || q.used() != 10_000 {
		t.Fatalf("%d frames, %d bytes fit in 10,000", n, q.used())
	}
	// The writer takes them: they still count against the bound.
	q.mu.Unlock()
	out := q.take(0)
	q.mu.Lock()
	if len(out) != 10_000 || q.room(1000, 0) {
		t.Fatal("the batch being written does not count")
	}
	q.mu.Unlock()
	q.release()
	// Room again; now fill and let the head expire.
	q.mu.Lock()
	for i := range 10 {
		q.appendData(1, int64(i)*ms, payload)
	}
	if q.room(1000, 50*ms) {
		t.Fatal("room while nothing expired")
	}
	if !q.room(1000, 105*ms) || st.drops[DropTooOld].Load() != 5 {
		t.Fatalf("head expiry: %d too-old drops, used %d", st.drops[DropTooOld].Load(), q.used())
	}
	q.appendData(1, 105*ms, payload)
	q.mu.Unlock()
	fs := frames(t, q.take(105*ms))
	q.release()
	if len(fs) != 6 || fs[0].Time != 5 || fs[5].Time != 105 {
		t.Fatalf("after head expiry: %d frames, first %d last %d", len(fs), fs[0].Time, fs[len(fs)-1].Time)
	}
}

// TestQueueCompaction: while the writer is blocked, head expiry must not
// let the buffer grow without bound.
func TestQueueCompaction(t *testing.T) {
	var st counters
	ms := int64(time.Millisecond)
	payload := make([]byte, 989)
	q := newQueue(10_000, 10*ms, &st)
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := range 100_000 {
		now := int64(i) * ms
		if q.room(1000, now) {
			q.appendData(1, now, payload)
		}
	}
	if cap(q.buf) > 40_000 {
		t.Fatalf("buffer grew to %d bytes for a 10,000-byte bound", cap(q.buf))
	}
}

// TestNoAllocs checks the hot path allocates nothing per datagram: framing
// a batch into the queue, taking it, parsing it and sending datagrams with
// sendmmsg. (x/net's ReadBatch allocates each source address; that is
// outside this package.)
func TestNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	s := newSession(nopRWC{}, (*Config)(nil).withDefaults())
	rb := newReadBatch(32, false)
	for i := range rb.ms {
		rb.ms[i].N = 100 + i
	}
	flowOf := func(*ipv4.Message, int, int64) (uint32, DropReason) { return 1, 0 }
	sink, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	_ = sink.SetReadBuffer(4 << 20)
	src, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	sd := newSender(&s.st, 32)
	pc := ipv4.NewPacketConn(src)
	to := sink.LocalAddr()
	drain := make([]byte, 2048)
	allocs := testing.AllocsPerRun(50, func() {
		s.enqueue(rb.ms, s.now(), flowOf)
		out := s.q.take(s.now())
		for len(out) > 0 {
			f, n, err := ParseFrame(out)
			if err != nil {
				t.Fatal(err)
			}
			sd.add(pc, to, nil, f.Payload)
			out = out[n:]
		}
		sd.flush()
		s.q.release()
		_ = sink.SetReadDeadline(time.Now().Add(time.Second))
		for range rb.ms {
			if _, err := sink.Read(drain); err != nil {
				t.Fatal(err)
			}
		}
	})
	// Anything per datagram would be at least 32.
	if allocs > 1 {
		t.Fatalf("%.1f allocations per batch of 32 datagrams", allocs)
	}
	t.Logf("%.1f allocations per batch of 32 datagrams", allocs)
}

type nopRWC struct{}

func (nopRWC) Read([]byte) (int, error)    { select {} }
func (nopRWC) Write(b []byte) (int, error) { return len(b), nil }
func (nopRWC) Close() error                { return nil }

func TestDelayFilter(t *testing.T) {
	var d delayFilter
	const offset = 1_000_000 // receiver clock − sender clock, ms
	// Frames sent every 10 ms arrive after 1 ms; one is held 500 ms.
	for ms := int64(0); ms < 1000; ms += 10 {
		if e := d.extra(offset+ms+1, uint32(ms)); e != 0 {
			t.Fatalf("fresh frame at %d: extra %d", ms, e)
		}
	}
	if e := d.extra(offset+1500, 1000); e != 499 {
		t.Fatalf("held frame: extra %d, want 499", e)
	}
	// A suspension of ten minutes: the base survives it.
	if e := d.extra(offset+601_000, 1000); e != 599_999 {
		t.Fatalf("after a suspension: extra %d", e)
	}
	// The sender's clock wraps around 2^32 ms.
	var w delayFilter
	w.extra(10, 1<<32-5)
	if e := w.extra(20, 4); e != 1 {
		t.Fatalf("across the wrap: extra %d, want 1", e)
	}
	// Drift: the receiver's clock gains 1 ms per minute on the sender's. The
	// base follows within the window of minutes, so fresh frames stay fresh.
	var dr delayFilter
	for m := int64(0); m < 60; m++ {
		for s := int64(0); s < 60_000; s += 1000 {
			now := m*60_000 + s
			if e := dr.extra(offset+now+m, uint32(now)); e > 4 {
				t.Fatalf("minute %d: drift counted as %d ms of delay", m, e)
			}
		}
	}
}
