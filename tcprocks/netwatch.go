package tcprocks

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/internal/netmon"
)

// netWatch is the process's one network monitor (package internal/netmon), shared by every
// rock that does not set Config.IgnoreNetworkChanges: it is created when the first rock starts
// and closed when the last one has finished, so a process without rocks runs none of its
// goroutines. One per process because the monitor watches the machine (the network namespace
// of the process), not a connection.
var netWatch = &netWatcher{rocks: make(map[*Conn]struct{})}

type netWatcher struct {
	mu    sync.Mutex
	mon   *netmon.Monitor
	unreg func()
	rocks map[*Conn]struct{}
}

// add registers c for network changes, starting the monitor if it is the first rock.
func (w *netWatcher) add(c *Conn) (remove func(), err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mon == nil {
		m, err := netmon.New(nil)
		if err != nil {
			return nil, err
		}
		unreg := m.RegisterChangeCallback(w.changed)
		if err := m.Start(); err != nil {
			m.Close()
			return nil, err
		}
		w.mon, w.unreg = m, unreg
	}
	w.rocks[c] = struct{}{}
	return func() { w.remove(c) }, nil
}

// remove unregisters c and stops the monitor after the last rock.
func (w *netWatcher) remove(c *Conn) {
	w.mu.Lock()
	delete(w.rocks, c)
	var m *netmon.Monitor
	if len(w.rocks) == 0 && w.mon != nil {
		m = w.mon
		w.unreg()
		w.mon, w.unreg = nil, nil
	}
	w.mu.Unlock()
	if m != nil {
		// Not inline: a rock may finish inside the monitor's callback, and Close waits for it.
		go m.Close()
	}
}

// changed passes a network change to every registered rock.
func (w *netWatcher) changed(d *netmon.ChangeDelta) {
	w.mu.Lock()
	rocks := make([]*Conn, 0, len(w.rocks))
	for c := range w.rocks {
		rocks = append(rocks, c)
	}
	w.mu.Unlock()
	for _, c := range rocks {
		c.netChanged(d)
	}
}

// watchNetwork registers the rock for network changes (see Config.IgnoreNetworkChanges).
func (c *Conn) watchNetwork() {
	if c.cfg.IgnoreNetworkChanges {
		return
	}
	unwatch, err := netWatch.add(c)
	if err != nil {
		c.cfg.Logger.Warn("tcprocks: no network monitor; failures are detected by heartbeats only", "err", err)
		return
	}
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		unwatch()
		return
	}
	c.netUnwatch = unwatch
	c.mu.Unlock()
}

// netChanged reacts to a change of the machine's network: a connected rock whose local
// address disappeared suspends; a suspended dialing rock retries at once when something
// appeared.
func (c *Conn) netChanged(d *netmon.ChangeDelta) {
	c.mu.Lock()
	defer c.unlock()
	switch {
	case c.finished:
	case c.state == Connected:
		if ip := addrIP(c.laddr); ip.IsValid() && d.InterfaceIPDisappeared(ip) {
			c.suspend(fmt.Errorf("%w: %v", ErrAddressRemoved, ip))
		}
	case c.state == Suspended && c.role == callbacks.Client && d.AddressAppeared():
		c.cfg.Logger.Debug("tcprocks: network change, retrying now", "id", fmt.Sprintf("%x", c.id), "change", d.String())
		c.retryNow()
	}
}

// staleDial is how long the connect of a resume attempt must have been under way before a
// network change aborts it: an older one may wait for a SYN sent into the old network (the
// kernel retransmits it only after 1 s), a younger one probably used the new network
// already. It also keeps a storm of changes (interfaces of containers coming and going) from
// aborting every attempt.
const staleDial = 250 * time.Millisecond

// retryNow makes a suspended dialing rock try again at once with its backoff reset, aborting
// the connect of an attempt under way for longer than staleDial. Under mu.
func (c *Conn) retryNow() {
	c.resetBackoff = true
	if c.dialCancel != nil && time.Since(c.dialStart) > staleDial {
		c.dialCancel()
	}
	c.poke()
}

// addrIP returns the IP of a TCP address, unmapped; the zero Addr for anything else.
func addrIP(a net.Addr) netip.Addr {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	ip, _ := netip.AddrFromSlice(ta.IP)
	return ip.Unmap()
}
