package tcprocks

import (
	"context"
	"testing"

	"github.com/rockudp/rockudp/callbacks"
)

type fixedLocator struct{ addrs []string }

func (l fixedLocator) Locate(context.Context, callbacks.Query) ([]string, error) {
	return l.addrs, nil
}

// TestMovedPeer: the path the rock used goes down for good; the rock finds its peer through an
// alternate address given on the live rock, or through the Locator.
func TestMovedPeer(t *testing.T) {
	for _, via := range []string{"alternate", "locator"} {
		t.Run(via, func(t *testing.T) {
			srvCfg, cliCfg := relayConfigs(t)
			l := listen(t, srvCfg)
			r1, r2 := newRelay(t, l), newRelay(t, l)
			if via == "locator" {
				cliCfg.Locator = fixedLocator{[]string{r2.Addr().String()}}
			}
			var evs eventLog
			cliCfg.Handler = &evs
			c, s := pair(t, l, r1.Addr().String(), cliCfg)
			// An idle rock notices a dead data connection at its heartbeats.
			waitFor(t, "control channel", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.ch != nil })
			echo(t, c, s, []byte("one"))
			r1.Refuse(true)
			r1.Reset()
			if via == "alternate" {
				c.SetAlternates(r2.Addr().String())
			}
			waitFor(t, "resumption", func() bool { return evs.count(callbacks.Resumed) == 1 })
			echo(t, c, s, []byte("two"))
			evs.mu.Lock()
			last := evs.ev[len(evs.ev)-1]
			evs.mu.Unlock()
			if last.Remote.String() != r2.Addr().String() {
				t.Fatalf("resumed with remote %v, want %v", last.Remote, r2.Addr())
			}
		})
	}
}
