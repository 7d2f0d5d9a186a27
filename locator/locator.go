package locator

import (
	"context"
	"errors"

	"github.com/rockudp/rockudp/callbacks"
)

// Locator finds a moved peer by looking up its DNS name(s) (see Lookup). It implements
// callbacks.Locator, so a rock consults it while suspended.
type Locator struct {
	cfg   Config
	names func(callbacks.Query) []string
}

var _ callbacks.Locator = (*Locator)(nil)

// NewLocator returns a Locator that looks up the given names, in order, whatever the query.
func NewLocator(cfg *Config, names ...string) *Locator {
	names = append([]string(nil), names...)
	return &Locator{cfg: cfg.withDefaults(), names: func(callbacks.Query) []string { return names }}
}

// NewLocatorFunc returns a Locator that looks up the name name(q) returns for each query;
// an empty name means "nothing known".
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
func (l *Locator) Locate(ctx context.Context, q callbacks.Query) ([]string, error) {
	var (
		out  []string
		errs []error
	)
	seen := map[string]bool{}
	names := l.names(q)
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
