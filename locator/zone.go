package locator

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// Default limits (see Limits).
const (
	DefaultRecordsPerName = 16
	DefaultNames          = 10000
	DefaultZoneFileSize   = 16 << 20
)

// Limits bound what a zone holds. The zero value of each field selects its default.
type Limits struct {
	// RecordsPerName bounds the records one owner name holds (the SOA not counted).
	// Default 16.
	RecordsPerName int
	// Names bounds the owner names in the zone. Default 10000.
	Names int
	// FileSize bounds the zone file, in bytes. Default 16 MiB.
	FileSize int
}

func (l Limits) withDefaults() Limits {
	if l.RecordsPerName <= 0 {
		l.RecordsPerName = DefaultRecordsPerName
	}
	if l.Names <= 0 {
		l.Names = DefaultNames
	}
	if l.FileSize <= 0 {
		l.FileSize = DefaultZoneFileSize
	}
	return l
}

// storedTypes are the record types a zone holds; updates may change only A, AAAA, SRV and TXT.
var storedTypes = map[uint16]bool{
	dns.TypeSOA: true, dns.TypeNS: true, dns.TypeA: true, dns.TypeAAAA: true,
	dns.TypeSRV: true, dns.TypeTXT: true,
}

// updatableTypes are the record types dynamic updates may add or delete.
var updatableTypes = map[uint16]bool{
	dns.TypeA: true, dns.TypeAAAA: true, dns.TypeSRV: true, dns.TypeTXT: true,
}

// zone is an immutable snapshot of one zone. Changes make a new snapshot (see edit).
type zone struct {
	origin string
	lim    Limits
	soa    *dns.SOA
	// names maps each owner name to its records (the SOA is kept apart).
	names map[string][]dns.RR
	// nodes counts, for every name that exists (owner names and the empty non-terminals
	// between them and the origin), the owner names at or below it.
	nodes map[string]int
}

// newZone returns a zone holding rrs, which must contain exactly one SOA, at origin.
func newZone(origin string, rrs []dns.RR, lim Limits) (*zone, error) {
	z := &zone{origin: origin, lim: lim, names: map[string][]dns.RR{}, nodes: map[string]int{}}
	for _, rr := range rrs {
		if err := z.add(rr); err != nil {
			return nil, err
		}
	}
	if z.soa == nil {
		return nil, fmt.Errorf("locator: zone %s has no SOA record", origin)
	}
	return z, nil
}

// checkRR canonicalises rr in place and checks it may be stored in the zone.
func (z *zone) checkRR(rr dns.RR) error {
	h := rr.Header()
	if h.Class != dns.ClassINET {
		return fmt.Errorf("locator: %s: class %s, want IN", h.Name, dns.ClassToString[h.Class])
	}
	if !storedTypes[h.Rrtype] {
		return fmt.Errorf("locator: %s: type %s not supported", h.Name, dns.TypeToString[h.Rrtype])
	}
	name, err := zoneName(h.Name, z.origin)
	if err != nil {
		return err
	}
	h.Name = name
	if (h.Rrtype == dns.TypeSOA || h.Rrtype == dns.TypeNS) && name != z.origin {
		return fmt.Errorf("locator: %s: %s records only at the zone apex", name, dns.TypeToString[h.Rrtype])
	}
	target := func(t *string) error {
		if *t == "." {
			return nil
		}
		c, err := CanonicalName(*t)
		*t = c
		return err
	}
	switch rr := rr.(type) {
	case *dns.SRV:
		return target(&rr.Target)
	case *dns.NS:
		return target(&rr.Ns)
	case *dns.SOA:
		if err := target(&rr.Ns); err != nil {
			return err
		}
		rr.Mbox = dns.CanonicalName(rr.Mbox)
		if _, ok := dns.IsDomainName(rr.Mbox); !ok {
			return fmt.Errorf("%w: SOA mailbox %q", ErrInvalidName, rr.Mbox)
		}
	case *dns.A:
		if rr.A.To4() == nil {
			return fmt.Errorf("locator: %s: bad A record", name)
		}
	case *dns.AAAA:
		if len(rr.AAAA) != 16 {
			return fmt.Errorf("locator: %s: bad AAAA record", name)
		}
	}
	return nil
}

// add adds rr to z, which must not be shared yet; a duplicate replaces the record's TTL.
func (z *zone) add(rr dns.RR) error {
	if err := z.checkRR(rr); err != nil {
		return err
	}
	h := rr.Header()
	if soa, ok := rr.(*dns.SOA); ok {
		if z.soa != nil && !dns.IsDuplicate(z.soa, soa) {
			return fmt.Errorf("locator: zone %s has two SOA records", z.origin)
		}
		z.soa = soa
		return nil
	}
	rrs := z.names[h.Name]
	for i, old := range rrs {
		if dns.IsDuplicate(old, rr) {
			rrs = slices.Clone(rrs)
			rrs[i] = rr
			z.names[h.Name] = rrs
			return nil
		}
	}
	if len(rrs) >= z.lim.RecordsPerName {
		return fmt.Errorf("%w: %s would hold more than %d", ErrTooManyRecords, h.Name, z.lim.RecordsPerName)
	}
	if len(rrs) == 0 {
		if len(z.names) >= z.lim.Names {
			return fmt.Errorf("%w: zone %s would hold more than %d names", ErrTooManyRecords, z.origin, z.lim.Names)
		}
		z.addNode(h.Name, 1)
	}
	z.names[h.Name] = append(rrs, rr)
	return nil
}

// addNode adds d to the node counts of name and its ancestors up to the origin.
func (z *zone) addNode(name string, d int) {
	for {
		if n := z.nodes[name] + d; n > 0 {
			z.nodes[name] = n
		} else {
			delete(z.nodes, name)
		}
		if name == z.origin {
			return
		}
		_, rest, _ := strings.Cut(name, ".")
		if rest == "" {
			return
		}
		name = rest
	}
}

// remove deletes the records of name for which drop returns true and reports whether
// there were any.
func (z *zone) remove(name string, drop func(dns.RR) bool) bool {
	rrs := z.names[name]
	kept := slices.DeleteFunc(slices.Clone(rrs), drop)
	switch {
	case len(kept) == len(rrs):
		return false
	case len(kept) == 0:
		delete(z.names, name)
		z.addNode(name, -1)
	default:
		z.names[name] = kept
	}
	return true
}

// edit returns a copy of z that can be changed without disturbing readers of z. Record
// slices are shared: change them only through add and remove, which copy.
func (z *zone) edit() *zone {
	c := *z
	c.names = make(map[string][]dns.RR, len(z.names))
	for k, v := range z.names {
		c.names[k] = slices.Clip(v)
	}
	c.nodes = make(map[string]int, len(z.nodes))
	for k, v := range z.nodes {
		c.nodes[k] = v
	}
	soa := *z.soa
	c.soa = &soa
	return &c
}

// exists reports whether name exists in the zone (as an owner or an empty non-terminal).
func (z *zone) exists(name string) bool { return z.nodes[name] > 0 || name == z.origin }

// get returns the records of name with type t (dns.TypeANY: all).
func (z *zone) get(name string, t uint16) []dns.RR {
	var out []dns.RR
	if name == z.origin && (t == dns.TypeSOA || t == dns.TypeANY) {
		out = append(out, z.soa)
	}
	for _, rr := range z.names[name] {
		if t == dns.TypeANY || rr.Header().Rrtype == t {
			out = append(out, rr)
		}
	}
	return out
}

// all returns every record: the SOA first, then owner names in sorted order.
func (z *zone) all() []dns.RR {
	out := make([]dns.RR, 0, 1+len(z.names))
	out = append(out, z.soa)
	keys := make([]string, 0, len(z.names))
	for k := range z.names {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if a == z.origin || b == z.origin {
			return btoi(b == z.origin) - btoi(a == z.origin)
		}
		return strings.Compare(a, b)
	})
	for _, k := range keys {
		rrs := slices.Clone(z.names[k])
		slices.SortStableFunc(rrs, func(a, b dns.RR) int {
			return int(a.Header().Rrtype) - int(b.Header().Rrtype)
		})
		out = append(out, rrs...)
	}
	return out
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ParseZone parses an RFC 1035 master file (the format BIND reads and AppendZone writes)
// for the zone origin and checks it: exactly one SOA, at the origin; NS records only at the
// origin; only SOA, NS, A, AAAA, SRV and TXT records, of class IN; every owner a host name
// inside the zone; no more records and names than lim allows. $INCLUDE is refused. Relative
// names are relative to origin. The records come back canonical (lower case) and sorted,
// without duplicates.
func ParseZone(b []byte, origin string, lim Limits) ([]dns.RR, error) {
	z, err := parseZone(b, origin, lim)
	if err != nil {
		return nil, err
	}
	return z.all(), nil
}

func parseZone(b []byte, origin string, lim Limits) (*zone, error) {
	lim = lim.withDefaults()
	if len(b) > lim.FileSize {
		return nil, fmt.Errorf("locator: zone file larger than %d bytes", lim.FileSize)
	}
	origin, err := CanonicalName(origin)
	if err != nil {
		return nil, fmt.Errorf("locator: zone origin: %w", err)
	}
	z := &zone{origin: origin, lim: lim, names: map[string][]dns.RR{}, nodes: map[string]int{}}
	zp := dns.NewZoneParser(bytes.NewReader(b), origin, "")
	zp.SetIncludeAllowed(false)
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		if err := z.add(rr); err != nil {
			return nil, err
		}
	}
	if err := zp.Err(); err != nil {
		return nil, fmt.Errorf("locator: zone file: %w", err)
	}
	if z.soa == nil {
		return nil, errors.New("locator: zone file has no SOA record")
	}
	return z, nil
}

// AppendZone appends rrs to b as an RFC 1035 master file, one absolute record per line,
// after a comment line.
func AppendZone(b []byte, rrs []dns.RR) []byte {
	b = append(b, "; rockudp locator zone\n"...)
	for _, rr := range rrs {
		b = append(b, rr.String()...)
		b = append(b, '\n')
	}
	return b
}

// addChanged adds rr like add and reports whether the zone changed (a duplicate with the
// same TTL changes nothing).
func (z *zone) addChanged(rr dns.RR) (bool, error) {
	if err := z.checkRR(rr); err != nil {
		return false, err
	}
	for _, old := range z.names[rr.Header().Name] {
		if dns.IsDuplicate(old, rr) && old.Header().Ttl == rr.Header().Ttl {
			return false, nil
		}
	}
	return true, z.add(rr)
}
