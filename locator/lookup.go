package locator

import (
	"cmp"
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"

	"github.com/miekg/dns"
)

// Lookup returns the addresses ("host:port") at which name may be reached, best first: the
// targets of the SRV record Service.name, ordered by priority and then by a weighted random
// choice (RFC 2782), each resolved to its AAAA and A addresses (alternating, IPv6 first);
// or, for a name with no SRV record, the name's own addresses with DefaultPort. A name that
// does not exist yields no addresses and no error. At most MaxRecords addresses come back.
//
// The answers are hints: Lookup accepts only records of the asked type and name, class IN,
// at most MaxRecords of each, and drops unusable addresses, but cannot tell whether the
// server lies; authenticate whatever you reach.
func Lookup(ctx context.Context, cfg *Config, name string) ([]string, error) {
	c := cfg.withDefaults()
	return c.lookup(ctx, name)
}

func (c *Config) lookup(ctx context.Context, name string) ([]string, error) {
	name, err := zoneName(name, "")
	if err != nil {
		return nil, err
	}
	srvs, extra, err := c.lookupSRV(ctx, name)
	if err != nil {
		return nil, err
	}
	type target struct {
		name  string
		port  uint16
		addrs []netip.Addr
		err   error
	}
	var targets []*target
	if len(srvs) == 0 {
		if c.DefaultPort == 0 {
			return nil, nil
		}
		targets = []*target{{name: name, port: c.DefaultPort}}
	}
	for _, s := range srvs {
		t := &target{name: dns.CanonicalName(s.Target), port: s.Port}
		t.addrs = addrsOf(extra, t.name, c.MaxRecords)
		targets = append(targets, t)
	}
	var wg sync.WaitGroup
	for _, t := range targets {
		if len(t.addrs) > 0 {
			continue
		}
		wg.Go(func() { t.addrs, t.err = c.lookupAddrs(ctx, t.name) })
	}
	wg.Wait()
	var out []string
	seen := map[string]bool{}
	var firstErr error
	for _, t := range targets {
		if t.err != nil && firstErr == nil {
			firstErr = t.err
		}
		for _, a := range t.addrs {
			s := net.JoinHostPort(a.String(), strconv.Itoa(int(t.port)))
			if !seen[s] && len(out) < c.MaxRecords {
				seen[s] = true
				out = append(out, s)
			}
		}
	}
	if len(out) == 0 {
		return nil, firstErr
	}
	return out, nil
}

// lookupSRV returns the usable SRV records of name, in the order to try them, and the
// reply's additional section. No SRV record is not an error.
func (c *Config) lookupSRV(ctx context.Context, name string) ([]*dns.SRV, []dns.RR, error) {
	qname := srvName(c.Service, name)
	if _, err := CanonicalName(qname); err != nil {
		return nil, nil, err
	}
	r, err := c.query(ctx, qname, dns.TypeSRV)
	if err != nil {
		return nil, nil, err
	}
	switch r.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, nil, nil
	default:
		return nil, nil, &Error{Op: "query", Name: qname, Server: c.Server, Rcode: r.Rcode}
	}
	var srvs []*dns.SRV
	for _, rr := range answers(r, qname, dns.TypeSRV, c.MaxRecords) {
		s := rr.(*dns.SRV)
		if s.Target == "." || s.Port == 0 {
			continue // "service not available here"
		}
		if _, err := CanonicalName(s.Target); err != nil {
			continue
		}
		srvs = append(srvs, s)
	}
	return orderSRV(srvs, rand.IntN), r.Extra, nil
}

// lookupAddrs returns the AAAA and A addresses of name, interleaved, IPv6 first.
func (c *Config) lookupAddrs(ctx context.Context, name string) ([]netip.Addr, error) {
	var (
		wg   sync.WaitGroup
		rs   [2]*dns.Msg
		errs [2]error
	)
	for i, t := range []uint16{dns.TypeAAAA, dns.TypeA} {
		wg.Go(func() { rs[i], errs[i] = c.query(ctx, name, t) })
	}
	wg.Wait()
	var got [2][]netip.Addr
	for i, t := range []uint16{dns.TypeAAAA, dns.TypeA} {
		if rs[i] == nil || rs[i].Rcode != dns.RcodeSuccess {
			continue
		}
		got[i] = usableAddrs(answers(rs[i], name, t, c.MaxRecords))
	}
	out := interleave(got[0], got[1])
	if len(out) == 0 {
		if errs[0] != nil {
			return nil, errs[0]
		}
		return nil, errs[1]
	}
	return out, nil
}

// answers returns the records of r's answer section with the asked owner, type and class,
// at most max of them.
func answers(r *dns.Msg, name string, t uint16, max int) []dns.RR {
	var out []dns.RR
	for _, rr := range r.Answer {
		h := rr.Header()
		if h.Rrtype == t && h.Class == dns.ClassINET && dns.CanonicalName(h.Name) == name && len(out) < max {
			out = append(out, rr)
		}
	}
	return out
}

// addrsOf returns the addresses given for name in an additional section (AAAA and A
// interleaved), at most max of each family.
func addrsOf(extra []dns.RR, name string, max int) []netip.Addr {
	var v6, v4 []dns.RR
	for _, rr := range extra {
		h := rr.Header()
		if h.Class != dns.ClassINET || dns.CanonicalName(h.Name) != name {
			continue
		}
		switch {
		case h.Rrtype == dns.TypeAAAA && len(v6) < max:
			v6 = append(v6, rr)
		case h.Rrtype == dns.TypeA && len(v4) < max:
			v4 = append(v4, rr)
		}
	}
	return interleave(usableAddrs(v6), usableAddrs(v4))
}

// usableAddrs returns the usable addresses of A and AAAA records.
func usableAddrs(rrs []dns.RR) []netip.Addr {
	var out []netip.Addr
	for _, rr := range rrs {
		var ip net.IP
		switch rr := rr.(type) {
		case *dns.A:
			ip = rr.A
		case *dns.AAAA:
			ip = rr.AAAA
		}
		if a, ok := netip.AddrFromSlice(ip); ok {
			if a, ok := usableAddr(a); ok {
				out = append(out, a)
			}
		}
	}
	return out
}

// interleave returns a[0], b[0], a[1], b[1], ... and then the rest of the longer one.
func interleave(a, b []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(a)+len(b))
	for i := 0; i < len(a) || i < len(b); i++ {
		if i < len(a) {
			out = append(out, a[i])
		}
		if i < len(b) {
			out = append(out, b[i])
		}
	}
	return out
}

// orderSRV sorts srvs by priority and orders each priority by RFC 2782's weighted random
// selection: a record is picked with a chance proportional to its weight (weight 0 rarely
// goes first). intn(n) returns a random number in [0, n).
func orderSRV(srvs []*dns.SRV, intn func(int) int) []*dns.SRV {
	slices.SortStableFunc(srvs, func(a, b *dns.SRV) int { return cmp.Compare(a.Priority, b.Priority) })
	out := make([]*dns.SRV, 0, len(srvs))
	for i := 0; i < len(srvs); {
		j := i
		for j < len(srvs) && srvs[j].Priority == srvs[i].Priority {
			j++
		}
		group := slices.Clone(srvs[i:j])
		// Weight-0 records first, as RFC 2782 asks, so they are chosen only on a zero draw.
		slices.SortStableFunc(group, func(a, b *dns.SRV) int { return cmp.Compare(btoi(a.Weight != 0), btoi(b.Weight != 0)) })
		for len(group) > 0 {
			total := 0
			for _, s := range group {
				total += int(s.Weight)
			}
			pick, sum, k := intn(total+1), 0, 0
			for k = range group {
				sum += int(group[k].Weight)
				if sum >= pick {
					break
				}
			}
			out = append(out, group[k])
			group = slices.Delete(group, k, k+1)
		}
		i = j
	}
	return out
}
