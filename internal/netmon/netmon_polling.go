package netmon

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// pollingMon is the fallback osMon: it reports a possible change every
// interval and reads the state with enumerate (interfaceState outside
// tests). The Monitor compares states, so an unchanged poll calls nobody.
type pollingMon struct {
	interval  time.Duration
	enumerate func() (State, error)
	done      chan struct{}
	closeOnce sync.Once
}

func newPollingMon(interval time.Duration, enumerate func() (State, error)) *pollingMon {
	return &pollingMon{interval: interval, enumerate: enumerate, done: make(chan struct{})}
}

func (p *pollingMon) Receive() (urgent bool, err error) {
	t := time.NewTimer(p.interval)
	defer t.Stop()
	select {
	case <-p.done:
		return false, fmt.Errorf("netmon: polling: %w", net.ErrClosed)
	case <-t.C:
		return true, nil // the poll was the wait: no debounce on top
	}
}

func (p *pollingMon) State() (State, error) { return p.enumerate() }

func (p *pollingMon) Close() error {
	p.closeOnce.Do(func() { close(p.done) })
	return nil
}

// interfaceState reads the state with the portable net package. It cannot
// see whether an IPv6 address is tentative, nor routes.
func interfaceState() (State, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return State{}, err
	}
	var s State
	for _, ifi := range ifs {
		addrs, err := ifi.Addrs()
		if err != nil {
			return State{}, err
		}
		i := Interface{Index: ifi.Index, Name: ifi.Name, Flags: ifi.Flags}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				ip, _ := netip.AddrFromSlice(ipn.IP)
				ones, _ := ipn.Mask.Size()
				i.Prefixes = append(i.Prefixes, netip.PrefixFrom(ip.Unmap(), ones))
			}
		}
		slices.SortFunc(i.Prefixes, comparePrefix)
		s.Interfaces = append(s.Interfaces, i)
	}
	slices.SortFunc(s.Interfaces, func(a, b Interface) int { return cmp.Compare(a.Index, b.Index) })
	return s, nil
}
