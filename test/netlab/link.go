//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// docRanges are the address blocks reserved for documentation (RFC 5737,
// RFC 3849): the only addresses a lab may use.
var docRanges = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("2001:db8::/32"),
}

// Link is a veth pair between a host and a router, carrying one subnet per
// address family. Its methods return errors instead of failing the test, so
// they may be called from any goroutine.
type Link struct {
	lab *Lab
	id  int // unique in the lab: names the router end, its delay line and its rules

	// Guarded by lab.mu.
	host, router *Host
	hostIf       string         // "ethN" in the host's namespace
	addrs        []netip.Prefix // the host's addresses, one per family
	gws          []netip.Prefix // the router's addresses, in the same order
	down         bool           // Down was called and Up was not
	imp          impairments
	qdisc        bool       // a root qdisc was installed on the ends
	line         *delayLine // the fallback delay line, if one runs
}

// routerIf is the name of the router end, unique in the lab so that the
// end can move to another router's namespace.
func (lk *Link) routerIf() string { return "v" + strconv.Itoa(lk.id) }

// Host returns the host end's host.
func (lk *Link) Host() *Host { return lk.host }

// Router returns the router the link is plugged into now.
func (lk *Link) Router() *Host {
	lk.lab.mu.Lock()
	defer lk.lab.mu.Unlock()
	return lk.router
}

// Interface returns the name of the host end's interface ("eth0", "eth1", ...
// in the order the host's links were made).
func (lk *Link) Interface() string { return lk.hostIf }

// Prefixes returns the host end's addresses with their prefix lengths.
func (lk *Link) Prefixes() []netip.Prefix {
	lk.lab.mu.Lock()
	defer lk.lab.mu.Unlock()
	return slices.Clone(lk.addrs)
}

// Addr returns the host end's address of the first subnet given to Connect
// (or to MoveTo), and the zero Addr if it has none.
func (lk *Link) Addr() netip.Addr {
	lk.lab.mu.Lock()
	defer lk.lab.mu.Unlock()
	if len(lk.addrs) == 0 {
		return netip.Addr{}
	}
	return lk.addrs[0].Addr()
}

// Gateways returns the router end's addresses, in the order of Prefixes.
func (lk *Link) Gateways() []netip.Addr {
	lk.lab.mu.Lock()
	defer lk.lab.mu.Unlock()
	var gws []netip.Addr
	for _, p := range lk.gws {
		gws = append(gws, p.Addr())
	}
	return gws
}

// String describes the link as "host/eth0-router".
func (lk *Link) String() string {
	lk.lab.mu.Lock()
	defer lk.lab.mu.Unlock()
	return lk.name()
}

func (lk *Link) name() string { return lk.host.name + "/" + lk.hostIf + "-" + lk.router.name }

// Connect plugs host into router with a new link carrying the given subnets,
// at most one per address family. In each subnet the router takes the first
// address; the host takes the prefix's address if it is not the subnet's own
// (192.0.2.10/24 gives the host 192.0.2.10), and the second address otherwise
// (192.0.2.0/24 gives it 192.0.2.2). If the host has no default route of a
// family yet, it gets one through this link. Subnets may not overlap those of
// other links of the same two namespaces. Connect fails the test on error.
func (l *Lab) Connect(host, router *Host, subnets ...netip.Prefix) *Link {
	l.tb.Helper()
	lk, err := l.connect(host, router, subnets)
	if err != nil {
		l.tb.Fatalf("%v", err)
	}
	return lk
}

func (l *Lab) connect(host, router *Host, subnets []netip.Prefix) (*Link, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.alive(); err != nil {
		return nil, err
	}
	if host == router || host.lab != l || router.lab != l {
		return nil, errors.New("netlab: connect: need two different hosts of this lab")
	}
	lk := &Link{lab: l, id: len(l.links) + 1, host: host, router: router}
	addrs, gws, err := l.plan(lk, router, subnets)
	if err != nil {
		return nil, err
	}
	lk.hostIf = "eth" + strconv.Itoa(host.nextIf)
	if err := host.ip("link", "add", lk.hostIf, "type", "veth", "peer", "name", lk.routerIf(), "netns", router.ns); err != nil {
		return nil, err
	}
	host.nextIf++
	l.links = append(l.links, lk)
	lk.addrs, lk.gws = addrs, gws
	if err := lk.configure(); err != nil {
		return nil, err
	}
	l.logf("%s: connected, addresses %v", lk.name(), addrs)
	return lk, nil
}

// plan checks subnets for a link from lk.host to router and returns the
// host's and the router's addresses.
func (l *Lab) plan(lk *Link, router *Host, subnets []netip.Prefix) (addrs, gws []netip.Prefix, err error) {
	if len(subnets) == 0 {
		return nil, nil, errors.New("netlab: a link needs at least one subnet")
	}
	for i, s := range subnets {
		a, g, err := planSubnet(s)
		if err != nil {
			return nil, nil, err
		}
		for _, prev := range subnets[:i] {
			if prev.Addr().Is4() == s.Addr().Is4() {
				return nil, nil, fmt.Errorf("netlab: %v and %v: one subnet per address family and link", prev, s)
			}
		}
		for _, other := range l.links {
			if other == lk || !other.shares(lk.host, router) {
				continue
			}
			for _, o := range other.gws {
				if o.Overlaps(a) {
					return nil, nil, fmt.Errorf("netlab: %v overlaps %v of link %s-%s", s, o.Masked(), other.host.name, other.router.name)
				}
			}
		}
		addrs, gws = append(addrs, a), append(gws, g)
	}
	return addrs, gws, nil
}

// shares reports whether either end of lk is in one of the namespaces.
func (lk *Link) shares(a, b *Host) bool {
	return lk.host == a || lk.host == b || lk.router == a || lk.router == b
}

// planSubnet returns the host's and the router's address in subnet s (see
// Connect), or an error if s is outside the documentation ranges or too small.
func planSubnet(s netip.Prefix) (host, router netip.Prefix, err error) {
	if !s.IsValid() {
		return host, router, fmt.Errorf("netlab: invalid subnet %v", s)
	}
	if !inDocRanges(s) {
		return host, router, fmt.Errorf("netlab: %v is outside the documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)", s)
	}
	net := s.Masked()
	maxBits := 30
	if s.Addr().Is6() {
		maxBits = 126
	}
	if s.Bits() > maxBits {
		return host, router, fmt.Errorf("netlab: subnet %v is too small for a router and a host", s)
	}
	gw := net.Addr().Next()
	h := s.Addr()
	if h == net.Addr() {
		h = gw.Next()
	}
	if h == gw || (h.Is4() && !net.Contains(h.Next())) {
		return host, router, fmt.Errorf("netlab: %v: the host cannot have the router's or the broadcast address", s)
	}
	return netip.PrefixFrom(h, s.Bits()), netip.PrefixFrom(gw, s.Bits()), nil
}

func inDocRanges(p netip.Prefix) bool {
	for _, r := range docRanges {
		if r.Bits() <= p.Bits() && r.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// configure brings both ends up with their addresses and the host's default
// routes, unless the link is down (lab.mu held).
func (lk *Link) configure() error {
	if lk.down {
		return nil
	}
	if err := lk.host.ip("link", "set", lk.hostIf, "up"); err != nil {
		return err
	}
	if err := lk.router.ip("link", "set", lk.routerIf(), "up"); err != nil {
		return err
	}
	for i := range lk.addrs {
		if err := lk.router.ip("addr", "replace", lk.gws[i].String(), "dev", lk.routerIf(), "nodad"); err != nil {
			return err
		}
		if err := lk.host.ip("addr", "replace", lk.addrs[i].String(), "dev", lk.hostIf, "nodad"); err != nil {
			return err
		}
	}
	return lk.defaultRoutes()
}

// defaultRoutes points the host's default routes at this link for each
// family whose default route is unclaimed or already this link's.
func (lk *Link) defaultRoutes() error {
	for i, a := range lk.addrs {
		fam := family(a.Addr())
		if gw := lk.host.gw[fam]; gw != nil && gw != lk {
			continue
		}
		lk.host.gw[fam] = lk
		if err := lk.host.ip(familyFlag(fam), "route", "replace", "default", "via", lk.gws[i].Addr().String(), "dev", lk.hostIf); err != nil {
			return err
		}
	}
	return nil
}

// family indexes Host.gw: 0 for IPv4, 1 for IPv6.
func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func familyFlag(fam int) string { return [2]string{"-4", "-6"}[fam] }

// Down takes both ends of the link down, as an interface that fails. The
// host sees its interface go down; the kernel drops the link's routes and
// IPv6 addresses (its IPv4 addresses stay). For a failure the host does not
// notice, use BlockAll.
func (lk *Link) Down() error {
	lk.lab.mu.Lock()
	defer lk.lab.mu.Unlock()
	if err := lk.lab.alive(); err != nil {
		return err
	}
	if err := lk.host.ip("link", "set", lk.hostIf, "down"); err != nil {
		return err
	}
	lk.down = true
	if err := lk.router.ip("link", "set", lk.routerIf(), "down"); err != nil {
		return err
	}
	lk.lab.logf("%s: down", lk.name())
	return nil
}

// Up brings the link back up with the addresses and routes it had, as a
// network manager would.
func (lk *Link) Up() error {
	lk.lab.mu.Lock()
	defer lk.lab.mu.Unlock()
	if err := lk.lab.alive(); err != nil {
		return err
	}
	lk.down = false
	if err := lk.configure(); err != nil {
		return err
	}
	lk.lab.logf("%s: up", lk.name())
	return nil
}

// ChangeAddr replaces the host's address old with new, the way a DHCP client
// does: old is removed first, so sockets bound to it fail, then new is added
// and the default route restored. If new is in another subnet than old, the
// router end is renumbered too (it takes the new subnet's first address).
// While the link is down, the new address is added by Up.
func (lk *Link) ChangeAddr(old, new netip.Prefix) error {
	lk.lab.mu.Lock()
	defer lk.lab.mu.Unlock()
	if err := lk.lab.alive(); err != nil {
		return err
	}
	i := slices.Index(lk.addrs, old)
	if i < 0 {
		return fmt.Errorf("netlab: %s has no address %v (it has %v)", lk.hostIf, old, lk.addrs)
	}
	if old.Addr().Is4() != new.Addr().Is4() {
		return fmt.Errorf("netlab: cannot change %v to %v: another address family", old, new)
	}
	addrs, gws, err := lk.lab.plan(lk, lk.router, []netip.Prefix{new})
	if err != nil {
		return err
	}
	if addrs[0] == old {
		return fmt.Errorf("netlab: %v is the address already", old)
	}
	// A link that is down has lost its IPv6 addresses already.
	if err := lk.host.ip("addr", "del", old.String(), "dev", lk.hostIf); err != nil && !lk.down {
		return err
	}
	if gws[0] != lk.gws[i] {
		if err := lk.router.ip("addr", "del", lk.gws[i].String(), "dev", lk.routerIf()); err != nil && !lk.down {
			return err
		}
	}
	lk.addrs[i], lk.gws[i] = addrs[0], gws[0]
	if err := lk.configure(); err != nil {
		return err
	}
	if lk.line != nil {
		if err := lk.delayRules(); err != nil {
			return err
		}
	}
	lk.lab.logf("%s: address %v -> %v (router %v)", lk.name(), old, addrs[0], gws[0])
	return nil
}

// MoveTo unplugs the link from its router and plugs it into router (which
// may be the same one) with new subnets, as a laptop that joins another
// network: the host keeps its interface but loses its addresses, then gets
// addresses in the new subnets (see Connect) and default routes through the
// new router. Impairments are cleared: they belonged to the old network.
// A link that was down comes up.
func (lk *Link) MoveTo(router *Host, subnets ...netip.Prefix) error {
	lk.lab.mu.Lock()
	defer lk.lab.mu.Unlock()
	if err := lk.lab.alive(); err != nil {
		return err
	}
	if router == lk.host || router.lab != lk.lab {
		return errors.New("netlab: move: need another host of this lab")
	}
	addrs, gws, err := lk.lab.plan(lk, router, subnets)
	if err != nil {
		return err
	}
	lk.imp = impairments{}
	if err := lk.applyImpairments(); err != nil {
		return err
	}
	for _, a := range lk.addrs {
		if err := lk.host.ip("addr", "del", a.String(), "dev", lk.hostIf); err != nil && !lk.down {
			return err
		}
		if gw := lk.host.gw[family(a.Addr())]; gw == lk {
			lk.host.gw[family(a.Addr())] = nil
		}
	}
	if router != lk.router {
		if err := lk.router.ip("link", "set", lk.routerIf(), "netns", router.ns); err != nil {
			return err
		}
		lk.router = router
	} else {
		for _, g := range lk.gws {
			if err := lk.router.ip("addr", "del", g.String(), "dev", lk.routerIf()); err != nil && !lk.down {
				return err
			}
		}
	}
	lk.addrs, lk.gws, lk.down = addrs, gws, false
	if err := lk.configure(); err != nil {
		return err
	}
	lk.lab.logf("%s: moved, addresses %v", lk.name(), addrs)
	return nil
}
