package locator

import (
	"context"
	"errors"

	"github.com/rockudp/rockudp/callbacks"
)

// Locator finds a moved peer by looking up its DNS name(s) (see Lookup). It implements
// callbacks.Locator, so a rock consults it while suspended.
//
// A peer may announce its own locator name when the rock is set up (tcprocks.Config.Name on
// its side); the rock passes it as Query.Name, and a Locator made by NewLocator looks it up
// first. A client thus finds a server that moved knowing only the DNS server to ask.
type Locator struct {
	cfg   Config
	names func(callbacks.Query) []string
}

var _ callbacks.Locator = (*Locator)(nil)

// NewLocator returns a Locator that looks up the name the peer announced (Query.Name), if
// any, then the given names, in order. With no names it relies on the peer's announcement
// alone.
func NewLocator(cfg *Config, names ...string) *Locator {
	names = append([]string(nil), names...)
	return &Locator{cfg: cfg.withDefaults(), names: func(q callbacks.Query) []string {
		if q.Name == "" {
			return names
		}
		return append([]string{q.Name}, names...)
	}}
}

// NewLocatorFunc returns a Locator that looks up the name name(q) returns for each query;
// an empty name means "nothing known". name decides alone: return q.Name to use the name the
// peer announced.
func NewLocatorFunc(cfg *Config, name func(q callbacks.Query) string) *Locator {
	return &Locator{cfg: cfg.withDefaults(), names: func(q callbacks.Query) []string {
		if n := name(q); n != "" {
			return []string{n}
		}
		return nil
	}}
}

// Locate returns the addresses of the Locator's names, best first and without repeats. It
// fails only when every lookup failed; an empty result and nil error mean "nothing known".
// A name given twice (announced and configured) is looked up once.
func (l *Locator) Locate(ctx context.Context, q callbacks.Query) ([]string, error) {
	var (
		out  []string
		errs []error
	)
	seen := map[string]bool{}
	asked := map[string]bool{}
	var names []string
	for _, n := range l.names(q) {
		if c, err := CanonicalName(n); err == nil {
			n = c
		}
		if !asked[n] {
			asked[n] = true
			names = append(names, n)
		}
	}
	for _, n := range names {
		addrs, err := l.cfg.lookup(ctx, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, a := range addrs {
			if !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
	}
	if len(names) > 0 && len(errs) == len(names) {
		return nil, errors.Join(errs...)
	}
	return out, nil
}
