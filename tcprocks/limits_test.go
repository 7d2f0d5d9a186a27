package tcprocks

import (
	"context"
	"errors"
	"io"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
)

// dialErr dials addr and returns the error (closing a rock it got).
func dialErr(t *testing.T, addr string, cfg *Config) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, "tcp", addr, cfg)
	if err == nil {
		c.Close()
		waitDone(t, c)
	}
	return err
}

// expectLimit checks that err is a refusal for the limit named by what.
func expectLimit(t *testing.T, err error, what string) {
	t.Helper()
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), what) {
		t.Fatalf("Dial error %v, want ErrLimit (%s)", err, what)
	}
	t.Logf("refused: %v", err)
}

func TestLimitMaxRocks(t *testing.T) {
	srvCfg, cliCfg := testConfigs(t)
	srvCfg.MaxRocks = 1
	l := listen(t, srvCfg)
	c, s := pair(t, l, l.Addr().String(), cliCfg)
	expectLimit(t, dialErr(t, l.Addr().String(), cliCfg), "listener full")
	echo(t, c, s, []byte("undisturbed"))
}

func TestLimitMaxSuspended(t *testing.T) {
	srvCfg, cliCfg := relayConfigs(t)
	srvCfg.MaxSuspended = 1
	l := listen(t, srvCfg)
	r := newRelay(t, l)
	c, s := pair(t, l, r.Addr().String(), cliCfg)
	echo(t, c, s, []byte("one"))
	r.Refuse(true)
	r.Reset()
	waitFor(t, "the server rock to suspend", func() bool { return s.Stats().State == Suspended })
	expectLimit(t, dialErr(t, l.Addr().String(), cliCfg), "too many suspended")
	r.Refuse(false)
	waitFor(t, "resumption", func() bool { return s.Stats().State == Connected && c.Stats().State == Connected })
	echo(t, c, s, []byte("two"))
	// Below the limit again: new rocks are welcome.
	c2, s2 := pair(t, l, l.Addr().String(), cliCfg)
	echo(t, c2, s2, []byte("three"))
}

func TestLimitInFlightMemory(t *testing.T) {
	srvCfg, cliCfg := testConfigs(t)
	srvCfg.MaxInFlightMemory = 1000
	l := listen(t, srvCfg)
	c, s := pair(t, l, l.Addr().String(), cliCfg)
	// The client does not read yet: the server holds what it wrote.
	if _, err := s.Write(make([]byte, 4000)); err != nil {
		t.Fatal(err)
	}
	expectLimit(t, dialErr(t, l.Addr().String(), cliCfg), "in-flight memory")
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 4000)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the acknowledgement", func() bool { return l.inflight.Load() == 0 })
	c2, s2 := pair(t, l, l.Addr().String(), cliCfg)
	echo(t, c2, s2, []byte("room again"))
	echo(t, c, s, []byte("undisturbed"))
}

func TestLimitPendingHandshakes(t *testing.T) {
	srvCfg, cliCfg := testConfigs(t)
	key := []byte("0123456789abcdef")
	srvCfg.PSK, cliCfg.PSK = key, key
	srvCfg.MaxPendingHandshakes = 1
	srvCfg.HandshakeTimeout = 500 * time.Millisecond
	l := listen(t, srvCfg)
	c, s := pair(t, l, l.Addr().String(), cliCfg)

	// A client that announces a key and never confirms it holds the only slot.
	m := initMsg{Flags: flagPSK}
	randomBytes(m.Public[:])
	ans, ec := rawHello(t, l.Addr().String(), appendInit(nil, m))
	defer ec.Close()
	if _, _, err := parseInitOK(ans); err != nil {
		t.Fatalf("answer to INIT: %v", err)
	}
	waitFor(t, "the pending handshake", func() bool { return l.pending.Load() == 1 })
	start := time.Now()
	expectLimit(t, dialErr(t, l.Addr().String(), cliCfg), "pending handshakes")
	echo(t, c, s, []byte("undisturbed"))
	// The silent client is dropped after the handshake timeout; the slot comes back.
	ec.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := ec.Read(make([]byte, 1)); err == nil || errors.Is(err, errDeadline) {
		t.Fatalf("silent client: %v", err)
	}
	t.Logf("silent client dropped after %v (HandshakeTimeout %v)", time.Since(start).Round(time.Millisecond), srvCfg.HandshakeTimeout)
	waitFor(t, "the slot", func() bool { return l.pending.Load() == 0 })
	c2, s2 := pair(t, l, l.Addr().String(), cliCfg)
	echo(t, c2, s2, []byte("after"))
}

func TestLimitResumeRate(t *testing.T) {
	srvCfg, cliCfg := testConfigs(t)
	srvCfg.MaxResumeRate = 2
	l := listen(t, srvCfg)
	c, s := pair(t, l, l.Addr().String(), cliCfg)
	// Third parties that know the ID try 8 resumptions at once: at most 2 (the burst) plus
	// 2 per second of the time they took get a challenge.
	const tries = 8
	var mu sync.Mutex
	refused := 0
	start := time.Now()
	var wg sync.WaitGroup
	for range tries {
		wg.Go(func() {
			req := resumeMsg{ID: c.ID()}
			randomBytes(req.Nonce[:])
			ans, ec := rawResume(t, l.Addr().String(), req)
			ec.Close()
			if reason, _, err := parseRefuse(ans); err == nil {
				if reason != refuseRate {
					t.Errorf("refused with reason %d", reason)
				}
				mu.Lock()
				refused++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	allowed := 2 + int(math.Ceil(2*elapsed.Seconds()))
	t.Logf("%d of %d attempts in %v refused (at most %d allowed)", refused, tries, elapsed.Round(time.Millisecond), allowed)
	if tries-refused > allowed {
		t.Fatalf("%d attempts got a challenge, at most %d allowed at 2/s", tries-refused, allowed)
	}
	if refused == 0 && allowed < tries {
		t.Fatal("no attempt refused")
	}
	echo(t, c, s, []byte("undisturbed"))
	// The real client resumes once the bucket has refilled (its backoff retries).
	c.Suspend()
	waitFor(t, "resumption", func() bool { return c.State() == Connected && s.Stats().State == Connected })
	echo(t, c, s, []byte("resumed"))
}
