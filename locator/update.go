package locator

import (
	"context"
	"time"

	"github.com/miekg/dns"
)

// update applies a dynamic update (RFC 2136) signed with one of the server's keys.
func (s *Server) update(w dns.ResponseWriter, r *dns.Msg) {
	if !s.checkTsig(w, r, "update") {
		return
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.Rcode = s.apply(r)
	if m.Rcode == dns.RcodeSuccess {
		s.stats.updates.Add(1)
	} else {
		s.stats.refused.Add(1)
		s.log.Warn("locator: update failed", "from", w.RemoteAddr().String(), "key", r.IsTsig().Hdr.Name,
			"rcode", dns.RcodeToString[m.Rcode])
	}
	s.reply(w, r, m)
}

// apply checks the zone section, prerequisites and updates of r (RFC 2136 section 3) and,
// if all pass, commits the change: new serial, zone file written, secondaries notified.
// It returns the response code.
func (s *Server) apply(r *dns.Msg) int {
	q := r.Question[0]
	s.mu.Lock()
	defer s.mu.Unlock()
	z := s.zone.Load()
	switch {
	case q.Qtype != dns.TypeSOA || q.Qclass != dns.ClassINET:
		return dns.RcodeFormatError
	case dns.CanonicalName(q.Name) != z.origin:
		return dns.RcodeNotAuth
	}
	if rc := z.prerequisites(r.Answer); rc != dns.RcodeSuccess {
		return rc
	}
	if rc := z.prescan(r.Ns); rc != dns.RcodeSuccess {
		return rc
	}
	ed := z.edit()
	changed := false
	for _, rr := range r.Ns {
		rr = dns.Copy(rr)
		h := rr.Header()
		h.Name = dns.CanonicalName(h.Name)
		switch h.Class {
		case dns.ClassINET:
			c, err := ed.addChanged(rr)
			if err != nil {
				s.log.Warn("locator: update refused", "err", err)
				return dns.RcodeRefused
			}
			changed = changed || c
		case dns.ClassANY:
			changed = ed.remove(h.Name, func(old dns.RR) bool {
				t := old.Header().Rrtype
				return updatableTypes[t] && (h.Rrtype == dns.TypeANY || h.Rrtype == t)
			}) || changed
		case dns.ClassNONE:
			h.Class = dns.ClassINET
			changed = ed.remove(h.Name, func(old dns.RR) bool { return dns.IsDuplicate(old, rr) }) || changed
		}
	}
	if !changed {
		return dns.RcodeSuccess
	}
	ed.soa.Serial++
	if ed.soa.Serial == 0 {
		ed.soa.Serial = 1
	}
	if s.cfg.File != "" {
		if err := writeFileAtomic(s.cfg.File, AppendZone(nil, ed.all()), 0o644); err != nil {
			s.log.Error("locator: zone file not written; update not applied", "file", s.cfg.File, "err", err)
			return dns.RcodeServerFailure
		}
	}
	s.zone.Store(ed)
	s.log.Info("locator: zone updated", "zone", ed.origin, "serial", ed.soa.Serial)
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return dns.RcodeSuccess
}

// prerequisites checks the prerequisite section of an update (RFC 2136 section 3.2).
func (z *zone) prerequisites(pre []dns.RR) int {
	type rrset struct {
		name string
		t    uint16
	}
	want := map[rrset][]dns.RR{}
	for _, rr := range pre {
		h := rr.Header()
		name := dns.CanonicalName(h.Name)
		if h.Ttl != 0 {
			return dns.RcodeFormatError
		}
		if !inZone(name, z.origin) {
			return dns.RcodeNotZone
		}
		used := name == z.origin || len(z.names[name]) > 0
		switch h.Class {
		case dns.ClassANY:
			switch {
			case h.Rdlength != 0:
				return dns.RcodeFormatError
			case h.Rrtype == dns.TypeANY && !used:
				return dns.RcodeNameError
			case h.Rrtype != dns.TypeANY && len(z.get(name, h.Rrtype)) == 0:
				return dns.RcodeNXRrset
			}
		case dns.ClassNONE:
			switch {
			case h.Rdlength != 0:
				return dns.RcodeFormatError
			case h.Rrtype == dns.TypeANY && used:
				return dns.RcodeYXDomain
			case h.Rrtype != dns.TypeANY && len(z.get(name, h.Rrtype)) > 0:
				return dns.RcodeYXRrset
			}
		case dns.ClassINET:
			k := rrset{name, h.Rrtype}
			if len(want[k]) >= z.lim.RecordsPerName {
				return dns.RcodeNXRrset
			}
			rr = dns.Copy(rr)
			rr.Header().Name = name
			want[k] = append(want[k], rr)
		default:
			return dns.RcodeFormatError
		}
	}
	for k, rrs := range want {
		if !sameSet(z.get(k.name, k.t), rrs) {
			return dns.RcodeNXRrset
		}
	}
	return dns.RcodeSuccess
}

// sameSet reports whether a and b hold the same records, ignoring TTLs and repeats.
func sameSet(a, b []dns.RR) bool {
	in := func(rr dns.RR, set []dns.RR) bool {
		for _, x := range set {
			if dns.IsDuplicate(rr, x) {
				return true
			}
		}
		return false
	}
	for _, rr := range a {
		if !in(rr, b) {
			return false
		}
	}
	for _, rr := range b {
		if !in(rr, a) {
			return false
		}
	}
	return true
}

// prescan checks the update section before anything changes (RFC 2136 section 3.4.1), and
// the server's policy: only A, AAAA, SRV and TXT records, at valid host names, may change.
func (z *zone) prescan(upd []dns.RR) int {
	for _, rr := range upd {
		h := rr.Header()
		name, err := CanonicalName(h.Name)
		switch {
		case err != nil:
			return dns.RcodeRefused
		case !inZone(name, z.origin):
			return dns.RcodeNotZone
		}
		switch h.Class {
		case dns.ClassINET:
			if !updatableTypes[h.Rrtype] {
				return dns.RcodeRefused
			}
		case dns.ClassANY:
			if h.Ttl != 0 || h.Rdlength != 0 {
				return dns.RcodeFormatError
			}
			if h.Rrtype != dns.TypeANY && !updatableTypes[h.Rrtype] {
				return dns.RcodeRefused
			}
		case dns.ClassNONE:
			if h.Ttl != 0 {
				return dns.RcodeFormatError
			}
			if !updatableTypes[h.Rrtype] {
				return dns.RcodeRefused
			}
		default:
			return dns.RcodeFormatError
		}
	}
	return dns.RcodeSuccess
}

// notifyLoop sends a NOTIFY to every secondary after each change, until Close.
func (s *Server) notifyLoop() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.kick:
		}
		z := s.zone.Load()
		for _, addr := range s.cfg.Notify {
			s.notify(addr, z)
		}
	}
}

// notify tells the secondary at addr that the zone changed, trying up to three times.
func (s *Server) notify(addr string, z *zone) {
	c := (&Config{Server: addr, Timeout: 2 * time.Second}).withDefaults()
	for try := 0; try < 3 && s.ctx.Err() == nil; try++ {
		m := new(dns.Msg)
		m.SetNotify(z.origin)
		m.Answer = []dns.RR{z.soa}
		ctx, cancel := context.WithTimeout(s.ctx, c.Timeout)
		r, err := c.exchange(ctx, m, "notify", z.origin, nil)
		cancel()
		if err == nil && r.Rcode == dns.RcodeSuccess {
			s.stats.notifies.Add(1)
			s.log.Debug("locator: notified", "secondary", addr, "serial", z.soa.Serial)
			return
		}
		s.log.Debug("locator: notify failed", "secondary", addr, "err", err)
	}
}
