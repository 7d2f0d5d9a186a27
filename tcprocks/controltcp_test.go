package tcprocks

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
)

// controlNetworks returns the control channel transports of both ends.
func controlNetworks(c, s *Conn) string { return c.ControlNetwork() + "/" + s.ControlNetwork() }

// TestControlOverTCPWhenUDPBlocked: with every datagram between the ends dropped, the control
// channel runs over TCP; a blackhole is detected by its heartbeats, the rock reconnects
// (control over TCP again) and replays byte-exact; once UDP passes again, the next
// reconnection brings QUIC back.
func TestControlOverTCPWhenUDPBlocked(t *testing.T) {
	srvCfg, cliCfg := relayConfigs(t)
	cliCfg.ControlFallbackAfter = 300 * time.Millisecond
	var cev, sev eventLog
	cliCfg.Handler, srvCfg.Handler = &cev, &sev
	l := listen(t, srvCfg)
	r := newRelay(t, l)
	r.BlockUDP(true)
	c, s := pair(t, l, r.Addr().String(), cliCfg)
	waitFor(t, "control channels over TCP", func() bool { return controlNetworks(c, s) == "tcp/tcp" })
	echo(t, c, s, []byte("before"))

	// A blackhole on an idle rock: only heartbeats can notice it.
	r.Blackhole(true)
	waitFor(t, "suspension", func() bool { return c.State() == Suspended || s.State() == Suspended })
	for _, log := range []*eventLog{&cev, &sev} {
		log.mu.Lock()
		for _, e := range log.ev {
			if e.Kind == callbacks.Suspended && !errors.Is(e.Cause, errHeartbeat) && !errors.Is(e.Cause, errCtlClosed) && !errors.Is(e.Cause, errPeerReconnect) {
				t.Errorf("suspended by %v, want missed heartbeats", e.Cause)
			}
		}
		log.mu.Unlock()
	}
	// Written while suspended: replayed after the reconnection.
	payload := make([]byte, 3<<20)
	rng := rand.NewChaCha8([32]byte{6})
	_, _ = rng.Read(payload)
	werr := make(chan error, 1)
	go func() {
		c.SetWriteDeadline(time.Now().Add(60 * time.Second))
		_, err := c.Write(payload)
		werr <- err
	}()
	r.Blackhole(false)
	got := make([]byte, len(payload))
	s.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadFull(s, got); err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("stream not byte-exact across the reconnection")
	}
	waitFor(t, "resumption", func() bool { return cev.count(callbacks.Resumed) > 0 && sev.count(callbacks.Resumed) > 0 })
	waitFor(t, "control channels over TCP after the reconnection", func() bool { return controlNetworks(c, s) == "tcp/tcp" })
	echo(t, c, s, []byte("after"))

	// UDP works again: the next reconnection uses QUIC.
	r.BlockUDP(false)
	resumed := cev.count(callbacks.Resumed)
	r.Reset()
	waitFor(t, "second resumption", func() bool { return cev.count(callbacks.Resumed) > resumed })
	waitFor(t, "control channels over QUIC", func() bool { return controlNetworks(c, s) == "udp/udp" })
	echo(t, c, s, []byte("quic again"))
}
