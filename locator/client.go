package locator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/miekg/dns"
)

// Defaults for zero Config fields.
const (
	DefaultServer     = "127.0.0.1:53"
	DefaultTTL        = 30 * time.Second
	DefaultTimeout    = 2 * time.Second
	DefaultMaxRecords = 16
)

// udpSize is the EDNS0 buffer size offered in queries and honoured in answers (the DNS flag
// day 2020 value, which avoids IP fragmentation).
const udpSize = 1232

// fudge is the TSIG time fudge, in seconds (RFC 8945 recommends 300).
const fudge = 300

// Config says where and how to register and look up names. A nil *Config is valid and
// selects every default; Register and Deregister also need Key.
type Config struct {
	// Server is the address ("host:port") of the DNS server that takes the updates and
	// answers the queries: the zone's primary, or for Lookup any server that serves the zone.
	// Default "127.0.0.1:53".
	Server string
	// Zone is the zone the names belong to. Default: found by asking Server for the SOA of
	// the name (one more round trip per Register; a Registrar asks once).
	Zone string
	// Key signs updates (TSIG). Default none: Register and Deregister fail with ErrNoKey.
	Key *Key
	// Service is the SRV service label prefixed to a name. Default "_rockudp._tcp".
	Service string
	// TTL is the time to live of registered records, rounded down to whole seconds.
	// Default 30 s.
	TTL time.Duration
	// DefaultPort is the port Lookup pairs with the addresses of a name that has no SRV
	// record. Default 0: such a name yields no addresses.
	DefaultPort uint16
	// Timeout bounds each exchange with the server; the context bounds the whole operation.
	// Default 2 s.
	Timeout time.Duration
	// MaxRecords bounds the addresses Register publishes for a name, the records Lookup
	// accepts from each answer, and the addresses Lookup returns. Default 16.
	MaxRecords int
	// Logger receives debug messages. Default nil: silent.
	Logger *slog.Logger
}

// withDefaults returns a copy of c with defaults filled in.
func (c *Config) withDefaults() Config {
	var d Config
	if c != nil {
		d = *c
	}
	if d.Server == "" {
		d.Server = DefaultServer
	}
	if d.Service == "" {
		d.Service = DefaultService
	}
	if d.TTL < time.Second {
		d.TTL = DefaultTTL
	}
	if d.Timeout <= 0 {
		d.Timeout = DefaultTimeout
	}
	if d.MaxRecords <= 0 {
		d.MaxRecords = DefaultMaxRecords
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	return d
}

// key returns the canonical key, or ErrNoKey.
func (c *Config) key() (Key, error) {
	if c.Key == nil {
		return Key{}, ErrNoKey
	}
	return c.Key.canonical()
}

// Register replaces the A and AAAA records of name with addrs and its SRV record
// (Service.name) with one for port, in one TSIG-signed dynamic update, with the configured
// TTL. Unusable addresses (unspecified, multicast, scoped) are dropped; with none left the
// name's records are removed, as Deregister does. It fails with ErrTooManyRecords when more
// than MaxRecords addresses remain.
func Register(ctx context.Context, cfg *Config, name string, port uint16, addrs []netip.Addr) error {
	c := cfg.withDefaults()
	return c.register(ctx, name, port, addrs)
}

// Deregister removes the A, AAAA and SRV records Register publishes for name.
func Deregister(ctx context.Context, cfg *Config, name string) error {
	c := cfg.withDefaults()
	return c.register(ctx, name, 0, nil)
}

// register sends the update that makes name's records say addrs and port (none: removed).
func (c *Config) register(ctx context.Context, name string, port uint16, addrs []netip.Addr) error {
	key, err := c.key()
	if err != nil {
		return err
	}
	if name, err = zoneName(name, ""); err != nil {
		return err
	}
	zone := c.Zone
	if zone == "" {
		if zone, err = c.findZone(ctx, name); err != nil {
			return err
		}
	} else if zone, err = CanonicalName(zone); err != nil {
		return fmt.Errorf("locator: zone: %w", err)
	}
	if !inZone(name, zone) {
		return fmt.Errorf("%w: %s is not in zone %s", ErrInvalidName, name, zone)
	}
	srv := srvName(c.Service, name)
	if _, err := CanonicalName(srv); err != nil {
		return err
	}
	rrs, err := c.records(name, srv, port, addrs)
	if err != nil {
		return err
	}
	m := new(dns.Msg)
	m.SetUpdate(zone)
	m.RemoveRRset([]dns.RR{
		&dns.ANY{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA}},
		&dns.ANY{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA}},
		&dns.ANY{Hdr: dns.RR_Header{Name: srv, Rrtype: dns.TypeSRV}},
	})
	if len(rrs) > 0 {
		m.Insert(rrs)
	}
	m.SetTsig(key.Name, key.Algorithm, fudge, time.Now().Unix())
	r, err := c.exchange(ctx, m, "update", name, &key)
	if err != nil {
		return err
	}
	if r.Rcode != dns.RcodeSuccess {
		return &Error{Op: "update", Name: name, Server: c.Server, Rcode: r.Rcode}
	}
	c.Logger.Debug("locator: registered", "name", name, "port", port, "records", len(rrs), "server", c.Server)
	return nil
}

// records returns the records that publish addrs and port under name (nil for no address).
func (c *Config) records(name, srv string, port uint16, addrs []netip.Addr) ([]dns.RR, error) {
	ttl := uint32(c.TTL / time.Second)
	hdr := func(n string, t uint16) dns.RR_Header {
		return dns.RR_Header{Name: n, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	var rrs []dns.RR
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		a, ok := usableAddr(a)
		if !ok || seen[a] {
			continue
		}
		seen[a] = true
		if len(seen) > c.MaxRecords {
			return nil, fmt.Errorf("%w: more than %d addresses for %s", ErrTooManyRecords, c.MaxRecords, name)
		}
		if a.Is4() {
			rrs = append(rrs, &dns.A{Hdr: hdr(name, dns.TypeA), A: a.AsSlice()})
		} else {
			rrs = append(rrs, &dns.AAAA{Hdr: hdr(name, dns.TypeAAAA), AAAA: a.AsSlice()})
		}
	}
	if len(rrs) == 0 {
		return nil, nil
	}
	return append(rrs, &dns.SRV{Hdr: hdr(srv, dns.TypeSRV), Port: port, Target: name}), nil
}

// findZone asks the server for the SOA of name and returns the zone that holds it.
func (c *Config) findZone(ctx context.Context, name string) (string, error) {
	r, err := c.query(ctx, name, dns.TypeSOA)
	if err != nil {
		return "", err
	}
	if r.Rcode == dns.RcodeSuccess || r.Rcode == dns.RcodeNameError {
		for _, rr := range append(r.Answer, r.Ns...) {
			if soa, ok := rr.(*dns.SOA); ok {
				z := dns.CanonicalName(soa.Hdr.Name)
				if inZone(name, z) {
					return z, nil
				}
			}
		}
	}
	return "", &Error{Op: "query", Name: name, Server: c.Server, Rcode: r.Rcode,
		Err: fmt.Errorf("%w: no SOA for the zone of the name", ErrBadReply)}
}

// query asks the server for the records of type t at name and checks the reply echoes the
// question; a reply with a failure rcode is returned as it is.
func (c *Config) query(ctx context.Context, name string, t uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, t)
	m.SetEdns0(udpSize, false)
	r, err := c.exchange(ctx, m, "query", name, nil)
	if err != nil {
		return nil, err
	}
	if len(r.Question) != 1 || dns.CanonicalName(r.Question[0].Name) != name || r.Question[0].Qtype != t {
		return nil, &Error{Op: "query", Name: name, Server: c.Server, Rcode: -1,
			Err: fmt.Errorf("%w: question not echoed", ErrBadReply)}
	}
	return r, nil
}

// exchange sends m and returns the reply, over UDP first and then TCP if the reply was
// truncated or the UDP attempt timed out (a message too large for UDP goes over TCP only). With key, m must carry a TSIG record and the reply
// must be signed with the same key.
func (c *Config) exchange(ctx context.Context, m *dns.Msg, op, name string, key *Key) (*dns.Msg, error) {
	fail := func(rcode int, err error) (*dns.Msg, error) {
		return nil, &Error{Op: op, Name: name, Server: c.Server, Rcode: rcode, Err: err}
	}
	var (
		r      *dns.Msg
		err    error
		udpErr error
	)
	networks := []string{"udp", "tcp"}
	if m.Len() > udpSize {
		networks = networks[1:] // too large for a UDP request the server will read
	}
	for _, network := range networks {
		r, err = c.exchangeOnce(ctx, network, m, key)
		if ctx.Err() != nil {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fail(-1, fmt.Errorf("%w: %w", os.ErrDeadlineExceeded, ctx.Err()))
			}
			return fail(-1, ctx.Err())
		}
		if r != nil && r.Truncated && network == "udp" {
			continue
		}
		var ne net.Error
		if r == nil && errors.As(err, &ne) && ne.Timeout() && network == "udp" {
			udpErr = err // perhaps a lost datagram: try TCP
			continue
		}
		break
	}
	if r == nil && udpErr != nil {
		err = errors.Join(udpErr, err)
	}
	switch {
	case r == nil:
		return fail(-1, err)
	case r.Truncated:
		return fail(-1, fmt.Errorf("%w: truncated over TCP", ErrBadReply))
	case err != nil && (key == nil || r.IsTsig() == nil):
		return fail(-1, err)
	case key == nil:
		return r, nil
	}
	t := r.IsTsig()
	if t == nil {
		if r.Rcode != dns.RcodeSuccess {
			return fail(r.Rcode, ErrUnsigned)
		}
		return fail(-1, ErrUnsigned)
	}
	if t.Error != dns.RcodeSuccess {
		return fail(r.Rcode, fmt.Errorf("TSIG error %s", dns.RcodeToString[int(t.Error)]))
	}
	if err != nil {
		return fail(r.Rcode, fmt.Errorf("reply TSIG: %w", err))
	}
	return r, nil
}

// exchangeOnce sends m over one connection of the given network and reads the reply, within
// Timeout and the context. A TSIG verification failure comes back with the reply.
func (c *Config) exchangeOnce(ctx context.Context, network string, m *dns.Msg, key *Key) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, c.Server)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	deadline, _ := ctx.Deadline()
	nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	co := &dns.Conn{Conn: nc, UDPSize: udpSize}
	if key != nil {
		co.TsigSecret = map[string]string{key.Name: key.Secret}
	}
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	for {
		r, err := co.ReadMsg()
		if r == nil {
			return nil, err
		}
		if r.Id != m.Id || !r.Response {
			if network == "udp" {
				continue // a stray or late datagram: keep waiting for ours
			}
			return nil, fmt.Errorf("%w: wrong message ID", ErrBadReply)
		}
		return r, err
	}
}
