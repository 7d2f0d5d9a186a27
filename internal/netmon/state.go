package netmon

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// State is a snapshot of the machine's interfaces, addresses and default
// routes. A State handed out by the Monitor is shared: do not modify it.
type State struct {
	// Interfaces, sorted by Index.
	Interfaces []Interface
	// DefaultRoutes are the unicast default routes of the main routing
	// table, IPv4 first. Only the netlink monitor sees routes; a polling
	// monitor leaves this empty.
	DefaultRoutes []Route
}

// Interface is one network interface in a State.
type Interface struct {
	Index int
	Name  string
	// Flags are FlagUp, FlagRunning, FlagLoopback, ... The netlink monitor
	// sets FlagRunning from the carrier (IFLA_CARRIER), which the kernel
	// reports at once, where IFF_RUNNING may lag by up to a second.
	Flags net.Flags
	// Prefixes are the interface's usable addresses, sorted.
	Prefixes []netip.Prefix
	// Tentative are IPv6 addresses still in duplicate address detection
	// (or that failed it): present, but not usable as a source yet.
	Tentative []netip.Prefix
}

// IsUp reports whether the interface is up and has a carrier (running):
// only then are its addresses usable.
func (i *Interface) IsUp() bool {
	return i.Flags&net.FlagUp != 0 && i.Flags&net.FlagRunning != 0
}

// Route is a default route.
type Route struct {
	Gateway   netip.Addr // zero for a route without gateway (point-to-point)
	Interface string     // the outgoing interface, "" if unknown
	IPv6      bool
}

func (r Route) String() string {
	fam := "ipv4"
	if r.IPv6 {
		fam = "ipv6"
	}
	return fmt.Sprintf("default(%s) via %v dev %s", fam, r.Gateway, r.Interface)
}

// Addrs returns the usable addresses: those of interfaces that are up,
// excluding tentative IPv6 addresses. The result is new and sorted.
func (s *State) Addrs() []netip.Prefix {
	var ps []netip.Prefix
	for i := range s.Interfaces {
		if s.Interfaces[i].IsUp() {
			ps = append(ps, s.Interfaces[i].Prefixes...)
		}
	}
	slices.SortFunc(ps, comparePrefix)
	return ps
}

// Interface returns the interface called name.
func (s *State) Interface(name string) (Interface, bool) {
	for _, ifi := range s.Interfaces {
		if ifi.Name == name {
			return ifi, true
		}
	}
	return Interface{}, false
}

// Equal reports whether s and o describe the same network.
func (s *State) Equal(o *State) bool {
	return slices.EqualFunc(s.Interfaces, o.Interfaces, func(a, b Interface) bool {
		return a.Index == b.Index && a.Name == b.Name && a.Flags == b.Flags &&
			slices.Equal(a.Prefixes, b.Prefixes) && slices.Equal(a.Tentative, b.Tentative)
	}) && slices.Equal(s.DefaultRoutes, o.DefaultRoutes)
}

// String describes the state on one line, for logs.
func (s *State) String() string {
	var sb strings.Builder
	for i, ifi := range s.Interfaces {
		if i > 0 {
			sb.WriteString(" ")
		}
		state := "down"
		if ifi.IsUp() {
			state = "up"
		}
		fmt.Fprintf(&sb, "%s(%s)%v", ifi.Name, state, ifi.Prefixes)
		if len(ifi.Tentative) > 0 {
			fmt.Fprintf(&sb, "tentative%v", ifi.Tentative)
		}
	}
	for _, r := range s.DefaultRoutes {
		fmt.Fprintf(&sb, " %v", r)
	}
	return sb.String()
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

func compareRoute(a, b Route) int {
	if a.IPv6 != b.IPv6 {
		if a.IPv6 {
			return 1
		}
		return -1
	}
	if c := a.Gateway.Compare(b.Gateway); c != 0 {
		return c
	}
	return strings.Compare(a.Interface, b.Interface)
}

// ifFlags converts IFF_* flags to net.Flags.
func ifFlags(f uint32) net.Flags {
	var nf net.Flags
	for _, m := range [...]struct {
		iff uint32
		nf  net.Flags
	}{
		{iffUp, net.FlagUp}, {iffBroadcast, net.FlagBroadcast}, {iffLoopback, net.FlagLoopback},
		{iffPointToPoint, net.FlagPointToPoint}, {iffMulticast, net.FlagMulticast}, {iffRunning, net.FlagRunning},
	} {
		if f&m.iff != 0 {
			nf |= m.nf
		}
	}
	return nf
}

// stateBuilder collects the messages of link, address and route dumps.
type stateBuilder struct {
	links  map[int32]*Interface
	routes []routeMsg
}

// add folds one parsed message of a dump into the state being built.
// Addresses of an interface the link dump did not list are dropped: it
// was removed in between, and its RTM_DELLINK triggers another dump.
func (sb *stateBuilder) add(m *message) {
	if sb.links == nil {
		sb.links = make(map[int32]*Interface)
	}
	switch m.Kind {
	case kindLink:
		if m.Type == rtmNewLink {
			sb.links[m.Link.Index] = &Interface{Index: int(m.Link.Index), Name: m.Link.Name, Flags: ifFlags(m.Link.flags())}
		}
	case kindAddr:
		ifi := sb.links[int32(m.Addr.Index)]
		if m.Type != rtmNewAddr || ifi == nil {
			return
		}
		if m.Addr.usable() {
			ifi.Prefixes = append(ifi.Prefixes, m.Addr.Prefix)
		} else {
			ifi.Tentative = append(ifi.Tentative, m.Addr.Prefix)
		}
	case kindRoute:
		if m.Type == rtmNewRoute && m.Route.isDefault() {
			sb.routes = append(sb.routes, m.Route)
		}
	}
}

// state returns the collected state, sorted.
func (sb *stateBuilder) state() State {
	var s State
	for _, ifi := range sb.links {
		slices.SortFunc(ifi.Prefixes, comparePrefix)
		slices.SortFunc(ifi.Tentative, comparePrefix)
		s.Interfaces = append(s.Interfaces, *ifi)
	}
	slices.SortFunc(s.Interfaces, func(a, b Interface) int { return cmp.Compare(a.Index, b.Index) })
	for _, rm := range sb.routes {
		r := Route{Gateway: rm.Gateway, IPv6: rm.Family == afInet6}
		if ifi := sb.links[int32(rm.Oif)]; ifi != nil {
			r.Interface = ifi.Name
		}
		s.DefaultRoutes = append(s.DefaultRoutes, r)
	}
	slices.SortFunc(s.DefaultRoutes, compareRoute)
	s.DefaultRoutes = slices.Compact(s.DefaultRoutes)
	return s
}

// stateFromDump parses the concatenated replies of link, address and route
// dumps (in that order) into a State. It is how the netlink monitor reads
// the kernel's tables, kept pure so that tests can feed it fake dumps.
func stateFromDump(b []byte) (State, error) {
	var sb stateBuilder
	for len(b) > 0 {
		m, n, err := parseMessage(b)
		if err != nil {
			return State{}, err
		}
		sb.add(&m)
		b = b[n:]
	}
	return sb.state(), nil
}

// ChangeDelta describes a change of the network: the states before and
// after, and precomputed answers to the questions a connection asks. A
// ChangeDelta is shared by all subscribers: do not modify it.
type ChangeDelta struct {
	Old, New State
	// Added and Removed are the usable addresses that appeared and
	// disappeared, sorted. An address on an interface that goes down (or
	// loses its carrier) is removed; it is added again when the interface
	// comes back. An IPv6 address is added when duplicate address
	// detection has finished, not when it is configured.
	Added, Removed []netip.Addr
	// LinksUp and LinksDown name the interfaces that came up (or appeared
	// up) and went down (or disappeared), sorted.
	LinksUp, LinksDown []string
	// RoutesAdded and RoutesRemoved are the default routes that appeared
	// and disappeared (netlink monitor only).
	RoutesAdded, RoutesRemoved []Route
	// Injected is true if the change was forced by Monitor.InjectEvent, in
	// which case everything else may be empty.
	Injected bool
}

// InterfaceIPDisappeared reports whether ip was a usable local address
// and is no longer one.
func (d *ChangeDelta) InterfaceIPDisappeared(ip netip.Addr) bool {
	_, found := slices.BinarySearchFunc(d.Removed, ip.Unmap(), netip.Addr.Compare)
	return found
}

// AddressAppeared reports whether the network may have become reachable in
// a new way: a usable address appeared, an interface came up, or a default
// route appeared (the route usually follows the address by a few
// milliseconds, and connecting before it exists fails). A connection
// waiting to reconnect should try again at once.
func (d *ChangeDelta) AddressAppeared() bool {
	return len(d.Added) > 0 || len(d.LinksUp) > 0 || len(d.RoutesAdded) > 0
}

// changed reports whether anything a subscriber cares about changed.
func (d *ChangeDelta) changed() bool {
	return len(d.Added) > 0 || len(d.Removed) > 0 || len(d.LinksUp) > 0 || len(d.LinksDown) > 0 ||
		len(d.RoutesAdded) > 0 || len(d.RoutesRemoved) > 0 || !d.Old.Equal(&d.New)
}

// String summarises the delta on one line, for logs.
func (d *ChangeDelta) String() string {
	return fmt.Sprintf("added=%v removed=%v up=%v down=%v routes+=%v routes-=%v injected=%v",
		d.Added, d.Removed, d.LinksUp, d.LinksDown, d.RoutesAdded, d.RoutesRemoved, d.Injected)
}

// newDelta computes the delta between two states.
func newDelta(old, new State, injected bool) *ChangeDelta {
	d := &ChangeDelta{Old: old, New: new, Injected: injected}
	oldAddrs, newAddrs := usableAddrs(&old), usableAddrs(&new)
	d.Added = difference(newAddrs, oldAddrs, netip.Addr.Compare)
	d.Removed = difference(oldAddrs, newAddrs, netip.Addr.Compare)
	oldUp, newUp := upLinks(&old), upLinks(&new)
	d.LinksUp = difference(newUp, oldUp, strings.Compare)
	d.LinksDown = difference(oldUp, newUp, strings.Compare)
	d.RoutesAdded = difference(new.DefaultRoutes, old.DefaultRoutes, compareRoute)
	d.RoutesRemoved = difference(old.DefaultRoutes, new.DefaultRoutes, compareRoute)
	return d
}

// usableAddrs returns the sorted, unique usable addresses of s.
func usableAddrs(s *State) []netip.Addr {
	var as []netip.Addr
	for _, p := range s.Addrs() {
		as = append(as, p.Addr())
	}
	slices.SortFunc(as, netip.Addr.Compare)
	return slices.Compact(as)
}

// upLinks returns the sorted names of the interfaces of s that are up.
func upLinks(s *State) []string {
	var names []string
	for i := range s.Interfaces {
		if s.Interfaces[i].IsUp() {
			names = append(names, s.Interfaces[i].Name)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// difference returns the elements of the sorted slice a that are not in
// the sorted slice b, or nil.
func difference[T any](a, b []T, cmp func(T, T) int) []T {
	var out []T
	for _, x := range a {
		if _, found := slices.BinarySearchFunc(b, x, cmp); !found {
			out = append(out, x)
		}
	}
	return out
}
