package tcprocks

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/internal/relay"
)

// newRelay returns a relay to l, closed at the end of the test.
func newRelay(t testing.TB, l *Listener) *relay.Relay {
	t.Helper()
	return newRelayTo(t, l.Addr().String())
}

// newRelayTo returns a relay to addr, closed at the end of the test.
func newRelayTo(t testing.TB, addr string) *relay.Relay {
	t.Helper()
	r, err := relay.New(addr, &relay.Config{CutLinger: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// relayConfigs are test configs for rocks behind a relay: the relay's socket buffers hold
// bytes in flight too, so the in-flight limit must cover them.
func relayConfigs(t testing.TB) (srv, cli *Config) {
	srv, cli = testConfigs(t)
	lim := 2*int(uint64(localLimits().Send)+uint64(localLimits().Recv)) + 16<<20
	srv.InFlightLimit, cli.InFlightLimit = lim, lim
	fast := callbacks.Policy{HeartbeatInterval: 100 * time.Millisecond, MissedHeartbeats: 5, RefusalGrace: 2 * time.Second}
	srv.Policy, cli.Policy = fast, fast
	// A rock accepted for a client whose handshake was then cut lingers that long.
	srv.Policy.ReconnectTimeout = 10 * time.Second
	cli.ProbeCache.SetNegativeTTL(0)
	if path := os.Getenv("ROCKS_DEBUG_LOG"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		h := slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug})
		srv.Logger, cli.Logger = slog.New(h).With("side", "srv"), slog.New(h).With("side", "cli")
	}
	return srv, cli
}

// eventLog records events.
type eventLog struct {
	mu sync.Mutex
	ev []callbacks.Event
}

func (l *eventLog) HandleEvent(e callbacks.Event) {
	l.mu.Lock()
	l.ev = append(l.ev, e)
	l.mu.Unlock()
}

func (l *eventLog) kinds() []callbacks.Kind {
	l.mu.Lock()
	defer l.mu.Unlock()
	var k []callbacks.Kind
	for _, e := range l.ev {
		k = append(k, e.Kind)
	}
	return k
}

func (l *eventLog) count(k callbacks.Kind) int {
	n := 0
	for _, x := range l.kinds() {
		if x == k {
			n++
		}
	}
	return n
}

func TestReconnectAfterFaults(t *testing.T) {
	for _, fault := range []string{"cut", "reset", "blackhole", "suspend"} {
		t.Run(fault, func(t *testing.T) {
			srvCfg, cliCfg := relayConfigs(t)
			var evs eventLog
			cliCfg.Handler = &evs
			l := listen(t, srvCfg)
			r := newRelay(t, l)
			c, s := pair(t, l, r.Addr().String(), cliCfg)
			waitFor(t, "control channel", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.ch != nil })

			echo(t, c, s, []byte("before"))
			switch fault {
			case "cut":
				r.Cut()
			case "reset":
				r.Reset()
			case "blackhole":
				r.Blackhole(true)
				waitFor(t, "suspension", func() bool { return c.State() == Suspended })
				r.Blackhole(false)
			case "suspend":
				c.Suspend()
			}
			waitFor(t, "resumption", func() bool { return evs.count(callbacks.Resumed) > 0 })
			echo(t, c, s, []byte("after"))
			k := evs.kinds()
			if len(k) < 3 || k[0] != callbacks.Suspended || k[1] != callbacks.Reconnecting {
				t.Fatalf("events %v", k)
			}
		})
	}
}

// echo sends msg from a to b and back.
func echo(t testing.TB, a, b *Conn, msg []byte) {
	t.Helper()
	a.SetDeadline(time.Now().Add(30 * time.Second))
	b.SetDeadline(time.Now().Add(30 * time.Second))
	defer a.SetDeadline(time.Time{})
	defer b.SetDeadline(time.Time{})
	if _, err := a.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Write(got); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(a, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

// stream writes at least n pseudo-random bytes to w, and goes on while more() says so, then
// closes its writing side; it returns the hash and the count.
func stream(w *Conn, n int64, seed uint64, more func() bool) ([32]byte, int64, error) {
	h := sha256.New()
	rng := rand.New(rand.NewPCG(seed, seed))
	buf := make([]byte, 64<<10)
	var total int64
	for n > 0 || more() {
		k := int64(1 + rng.IntN(len(buf)))
		if n > 0 {
			k = min(k, n)
		}
		for i := range buf[:k] {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := w.Write(buf[:k]); err != nil {
			return [32]byte{}, total, err
		}
		h.Write(buf[:k])
		n -= k
		total += k
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, total, w.CloseWrite()
}

// drain reads r to EOF and returns the hash and length.
func drain(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 32<<10))
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, n, err
}

func TestStreamThroughFaults(t *testing.T) {
	size, faults := int64(256<<20), 100
	if raceEnabled {
		size = 64 << 20 // the race detector slows the copy loops about tenfold
	}
	if testing.Short() {
		size, faults = 32<<20, 10
	}
	srvCfg, cliCfg := relayConfigs(t)
	l := listen(t, srvCfg)
	r := newRelay(t, l)
	resumed := countResumed(cliCfg)
	c, s := pair(t, l, r.Addr().String(), cliCfg)

	type result struct {
		sent, got [32]byte
		n, wrote  int64
		err       error
	}
	var faultsDone atomic.Bool
	more := func() bool { return !faultsDone.Load() }
	run := func(w, rd *Conn, seed uint64) <-chan result {
		ch := make(chan result, 1)
		go func() {
			var res result
			var wg sync.WaitGroup
			wg.Go(func() {
				var err error
				if res.sent, res.wrote, err = stream(w, size, seed, more); err != nil {
					res.err = errors.Join(res.err, err)
				}
			})
			var err error
			res.got, res.n, err = drain(rd)
			wg.Wait()
			res.err = errors.Join(res.err, err)
			ch <- res
		}()
		return ch
	}
	up, down := run(c, s, 1), run(s, c, 2)
	rng := rand.New(rand.NewPCG(3, 4))
	stop := make(chan struct{})
	var faultWG sync.WaitGroup
	faultWG.Go(func() {
		for i := 0; i < faults; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(20+rng.IntN(80)) * time.Millisecond):
			}
			switch rng.IntN(4) {
			case 0:
				r.Cut()
			case 1:
				r.Reset()
			case 2:
				r.Blackhole(true)
				time.Sleep(time.Duration(rng.IntN(800)) * time.Millisecond)
				r.Blackhole(false)
			case 3:
				r.SetDelay(time.Duration(rng.IntN(20)) * time.Millisecond)
			}
		}
		r.SetDelay(0)
		faultsDone.Store(true)
	})
	for _, ch := range []<-chan result{up, down} {
		select {
		case res := <-ch:
			if res.err != nil {
				t.Fatal(res.err)
			}
			if res.n != res.wrote || res.n < size || res.sent != res.got {
				t.Fatalf("received %d bytes of %d (at least %d), hashes equal: %v", res.n, res.wrote, size, res.sent == res.got)
			}
			t.Logf("%d MiB delivered, SHA-256 equal", res.n>>20)
		case <-time.After(10 * time.Minute):
			t.Fatal("stream did not finish")
		}
	}
	close(stop)
	faultWG.Wait()
	t.Logf("%d faults injected during the transfer, %d resumptions", faults, resumed.Load())
	if resumed.Load() == 0 {
		t.Error("no fault broke the connection")
	}
}
