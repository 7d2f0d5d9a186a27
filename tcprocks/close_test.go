package tcprocks

import (
	"io"
	"sync"
	"testing"

	"github.com/rockudp/rockudp/callbacks"
)

// TestSimultaneousGracefulClose: both sides CloseWrite, read to EOF, then Close at the same
// time. Both rocks finish gracefully without suspending (no reconnection, no linger for the
// refusal grace), whichever side's control channel goes away first.
func TestSimultaneousGracefulClose(t *testing.T) {
	rounds := 20
	if testing.Short() {
		rounds = 5
	}
	srvCfg, cliCfg := testConfigs(t)
	var cliEv, srvEv eventLog
	srvCfg.Handler, cliCfg.Handler = &srvEv, &cliEv
	l := listen(t, srvCfg)
	for i := 0; i < rounds; i++ {
		c, s := pair(t, l, l.Addr().String(), cliCfg)
		waitFor(t, "control channel", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.ch != nil })
		echo(t, c, s, []byte("hello"))
		var wg sync.WaitGroup
		for _, rk := range []*Conn{c, s} {
			wg.Go(func() {
				if err := rk.CloseWrite(); err != nil {
					t.Error(err)
				}
				if b, err := io.ReadAll(rk); err != nil || len(b) != 0 {
					t.Errorf("read %q, %v; want EOF", b, err)
				}
			})
		}
		wg.Wait()
		for _, rk := range []*Conn{c, s} {
			wg.Go(func() { rk.Close() })
		}
		wg.Wait()
		waitDone(t, c)
		waitDone(t, s)
		for _, rk := range []*Conn{c, s} {
			rk.mu.Lock()
			err := rk.finErr
			rk.mu.Unlock()
			if err != nil {
				t.Fatalf("round %d: role %d closed with %v", i, rk.role, err)
			}
		}
		if n, m := cliEv.count(callbacks.Suspended), srvEv.count(callbacks.Suspended); n+m > 0 {
			t.Fatalf("round %d: %d client and %d server suspensions: client events %v", i, n, m, cliEv.kinds())
		}
	}
}
