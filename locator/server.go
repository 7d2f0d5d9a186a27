package locator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/netutil"
)

// Defaults for zero ServerConfig fields.
const (
	DefaultZone          = "rockudp.internal."
	DefaultUpdateRecords = 64
	DefaultTCPConns      = 256
)

// ServerConfig configures the embedded authoritative server. A nil *ServerConfig is valid
// and selects every default (a memory-only zone that refuses every update).
type ServerConfig struct {
	// Zone is the zone served. Default "rockudp.internal.".
	Zone string
	// Keys are the TSIG keys that may update and transfer the zone. Default none: every
	// update and transfer is refused.
	Keys []Key
	// File is the zone file (RFC 1035 master file). If it exists it is loaded at start;
	// after every change it is replaced atomically (mode 0644). Default "": memory only.
	File string
	// NSAddrs are the addresses of the name server ns.<zone> recorded (NS, A, AAAA) when a
	// new zone is created. Default: Listen's address when it is a specific IP, else none.
	NSAddrs []netip.Addr
	// TTL is the TTL of the SOA and NS records of a new zone; its SOA's negative-caching TTL
	// is half of it. Default 60 s.
	TTL time.Duration
	// Notify lists secondaries ("host:port") sent a DNS NOTIFY after every change, so they
	// transfer the zone at once. Default none.
	Notify []string
	// Limits bound the zone (records per name, names, file size); see Limits for defaults.
	Limits Limits
	// UpdateRecords bounds the records (prerequisites and updates) in one update message.
	// Default 64. (A UDP message is at most 1232 bytes, a TCP one at most 65535.)
	UpdateRecords int
	// TCPConns bounds the TCP connections served at once; more wait to be accepted.
	// Default 256.
	TCPConns int
	// Logger receives refused requests (Warn), changes (Info) and debug messages.
	// Default nil: silent.
	Logger *slog.Logger
}

func (c *ServerConfig) withDefaults() (ServerConfig, error) {
	var d ServerConfig
	if c != nil {
		d = *c
	}
	if d.Zone == "" {
		d.Zone = DefaultZone
	}
	z, err := CanonicalName(d.Zone)
	if err != nil {
		return d, fmt.Errorf("locator: zone: %w", err)
	}
	d.Zone = z
	d.Keys = append([]Key(nil), d.Keys...)
	for i, k := range d.Keys {
		if d.Keys[i], err = k.canonical(); err != nil {
			return d, err
		}
	}
	d.NSAddrs = append([]netip.Addr(nil), d.NSAddrs...)
	d.Notify = append([]string(nil), d.Notify...)
	if d.TTL < time.Second {
		d.TTL = 60 * time.Second
	}
	d.Limits = d.Limits.withDefaults()
	if d.UpdateRecords <= 0 {
		d.UpdateRecords = DefaultUpdateRecords
	}
	if d.TCPConns <= 0 {
		d.TCPConns = DefaultTCPConns
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	return d, nil
}

// ServerStats counts what a Server did.
type ServerStats struct {
	Queries   uint64 // queries answered
	Updates   uint64 // updates applied (NOERROR)
	Refused   uint64 // updates and transfers refused or failed: unsigned, bad TSIG, policy, prerequisites
	Transfers uint64 // zone transfers served
	Notifies  uint64 // NOTIFY messages acknowledged by secondaries
}

// Server is the embedded authoritative DNS server for one zone. It answers over UDP and TCP
// on the same port.
type Server struct {
	cfg   ServerConfig
	log   *slog.Logger
	zone  atomic.Pointer[zone]
	mu    sync.Mutex // serialises changes of the zone and writes of the file
	addr  net.Addr
	srvs  []*dns.Server
	wg    sync.WaitGroup
	ctx   context.Context // cancelled by Close
	stop  context.CancelFunc
	once  sync.Once
	kick  chan struct{} // wakes the NOTIFY loop
	stats struct{ queries, updates, refused, transfers, notifies atomic.Uint64 }
}

// Listen starts a Server on addr ("127.0.0.1:0", "[::1]:5353", ...), UDP and TCP on the
// same port; port 0 picks a free one.
func Listen(addr string, cfg *ServerConfig) (*Server, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("locator: listen address: %w", err)
	}
	var (
		pc net.PacketConn
		ln net.Listener
	)
	for try := 0; ; try++ {
		if pc, err = net.ListenPacket("udp", ap.String()); err != nil {
			return nil, fmt.Errorf("locator: %w", err)
		}
		tcp := netip.AddrPortFrom(ap.Addr(), uint16(pc.LocalAddr().(*net.UDPAddr).Port))
		if ln, err = net.Listen("tcp", tcp.String()); err == nil {
			break
		}
		pc.Close()
		if ap.Port() != 0 || try == 10 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("locator: %w", err)
		}
	}
	c := ServerConfig{}
	if cfg != nil {
		c = *cfg
	}
	if len(c.NSAddrs) == 0 && !ap.Addr().IsUnspecified() {
		c.NSAddrs = []netip.Addr{ap.Addr()}
	}
	return NewServer(pc, ln, &c)
}

// NewServer starts a Server on ready sockets: pc for UDP and ln for TCP (either may be nil,
// not both). It loads or creates the zone. It owns the sockets from then on, even when it
// fails: Close (or the failure) closes them.
func NewServer(pc net.PacketConn, ln net.Listener, cfg *ServerConfig) (*Server, error) {
	closeAll := func(err error) (*Server, error) {
		if pc != nil {
			pc.Close()
		}
		if ln != nil {
			ln.Close()
		}
		return nil, err
	}
	c, err := cfg.withDefaults()
	if err != nil {
		return closeAll(err)
	}
	if pc == nil && ln == nil {
		return nil, errors.New("locator: NewServer needs a PacketConn or a Listener")
	}
	z, err := loadZone(&c)
	if err != nil {
		return closeAll(err)
	}
	s := &Server{cfg: c, log: c.Logger, kick: make(chan struct{}, 1)}
	s.zone.Store(z)
	s.ctx, s.stop = context.WithCancel(context.Background())
	secrets := map[string]string{}
	for _, k := range c.Keys {
		secrets[k.Name] = k.Secret
	}
	start := func(srv *dns.Server) error {
		srv.Handler = s
		srv.MsgAcceptFunc = s.accept
		srv.TsigSecret = secrets
		ready := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(ready) }
		failed := make(chan error, 1)
		s.wg.Go(func() {
			if err := srv.ActivateAndServe(); err != nil {
				failed <- err
				s.log.Debug("locator: server stopped", "err", err)
			}
		})
		select {
		case <-ready:
			s.srvs = append(s.srvs, srv)
			return nil
		case err := <-failed:
			return fmt.Errorf("locator: %w", err)
		}
	}
	fail := func(err error) (*Server, error) {
		s.Close()
		return closeAll(err)
	}
	if pc != nil {
		s.addr = pc.LocalAddr()
		if err := start(&dns.Server{PacketConn: pc, UDPSize: udpSize}); err != nil {
			return fail(err)
		}
	}
	if ln != nil {
		if s.addr == nil {
			s.addr = ln.Addr()
		}
		err := start(&dns.Server{Listener: netutil.LimitListener(ln, c.TCPConns), ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
			IdleTimeout: func() time.Duration { return 10 * time.Second }, MaxTCPQueries: 128})
		if err != nil {
			return fail(err)
		}
	}
	if len(c.Notify) > 0 {
		s.wg.Go(s.notifyLoop)
	}
	s.log.Info("locator: serving", "zone", c.Zone, "addr", s.addr.String(), "serial", z.soa.Serial)
	return s, nil
}

// loadZone reads the zone file, or makes a new zone (and writes it) when there is none.
func loadZone(c *ServerConfig) (*zone, error) {
	if c.File != "" {
		b, err := readZoneFile(c.File, c.Limits.FileSize)
		if err == nil {
			z, err := parseZone(b, c.Zone, c.Limits)
			if err != nil {
				return nil, fmt.Errorf("%w (file %s)", err, c.File)
			}
			return z, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("locator: %w", err)
		}
	}
	ttl := uint32(c.TTL / time.Second)
	hdr := func(name string, t uint16) dns.RR_Header {
		return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	ns := "ns." + c.Zone
	rrs := []dns.RR{
		&dns.SOA{Hdr: hdr(c.Zone, dns.TypeSOA), Ns: ns, Mbox: "hostmaster." + c.Zone, Serial: 1,
			Refresh: 3600, Retry: 600, Expire: 7 * 86400, Minttl: max(ttl/2, 1)},
		&dns.NS{Hdr: hdr(c.Zone, dns.TypeNS), Ns: ns},
	}
	for _, a := range c.NSAddrs {
		if a, ok := usableAddr(a); ok && a.Is4() {
			rrs = append(rrs, &dns.A{Hdr: hdr(ns, dns.TypeA), A: a.AsSlice()})
		} else if ok {
			rrs = append(rrs, &dns.AAAA{Hdr: hdr(ns, dns.TypeAAAA), AAAA: a.AsSlice()})
		}
	}
	z, err := newZone(c.Zone, rrs, c.Limits)
	if err != nil {
		return nil, err
	}
	if c.File != "" {
		if err := writeFileAtomic(c.File, AppendZone(nil, z.all()), 0o644); err != nil {
			return nil, fmt.Errorf("locator: %w", err)
		}
	}
	return z, nil
}

// readZoneFile reads path, failing if it is larger than max bytes.
func readZoneFile(path string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > max {
		return nil, fmt.Errorf("zone file %s larger than %d bytes", path, max)
	}
	return b, nil
}

// Addr returns the server's address (UDP; TCP listens on the same port).
func (s *Server) Addr() net.Addr { return s.addr }

// Zone returns the name of the zone served.
func (s *Server) Zone() string { return s.cfg.Zone }

// Serial returns the zone's SOA serial, which grows by one with every change.
func (s *Server) Serial() uint32 { return s.zone.Load().soa.Serial }

// Records returns a copy of every record of the zone, the SOA first.
func (s *Server) Records() []dns.RR {
	rrs := s.zone.Load().all()
	for i, rr := range rrs {
		rrs[i] = dns.Copy(rr)
	}
	return rrs
}

// Stats returns the server's counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{
		Queries: s.stats.queries.Load(), Updates: s.stats.updates.Load(),
		Refused: s.stats.refused.Load(), Transfers: s.stats.transfers.Load(),
		Notifies: s.stats.notifies.Load(),
	}
}

// Close stops the server, closes its sockets and waits for its goroutines. The zone file is
// always up to date, so nothing needs saving. Close is idempotent.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		s.stop()
		for _, srv := range s.srvs {
			if e := srv.Shutdown(); e != nil && err == nil {
				err = fmt.Errorf("locator: %w", e)
			}
		}
		s.wg.Wait()
	})
	return err
}

// accept lets queries and updates through to ServeDNS and bounds the sections of each.
func (s *Server) accept(dh dns.Header) dns.MsgAcceptAction {
	const qr = 1 << 15
	if dh.Bits&qr != 0 {
		return dns.MsgIgnore
	}
	if dh.Qdcount != 1 {
		return dns.MsgReject
	}
	switch int(dh.Bits>>11) & 0xF {
	case dns.OpcodeQuery:
		if dh.Ancount > 0 || dh.Nscount > 1 || dh.Arcount > 2 {
			return dns.MsgReject
		}
	case dns.OpcodeUpdate:
		if int(dh.Ancount)+int(dh.Nscount) > s.cfg.UpdateRecords || dh.Arcount > 2 {
			return dns.MsgReject
		}
	default:
		return dns.MsgRejectNotImplemented
	}
	return dns.MsgAccept
}

// ServeDNS answers one request; it implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	switch r.Opcode {
	case dns.OpcodeUpdate:
		s.update(w, r)
	case dns.OpcodeQuery:
		switch r.Question[0].Qtype {
		case dns.TypeAXFR, dns.TypeIXFR:
			s.transfer(w, r)
		default:
			s.query(w, r)
		}
	}
}

// isTCP reports whether w answers over TCP.
func isTCP(w dns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.TCPAddr)
	return ok
}

// checkTsig reports whether r is signed with a valid key; if not it answers r with rcode
// (REFUSED for no signature, NOTAUTH with a TSIG error for a bad one), counts and logs it.
func (s *Server) checkTsig(w dns.ResponseWriter, r *dns.Msg, what string) bool {
	t := r.IsTsig()
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeRefused)
	if t == nil {
		s.stats.refused.Add(1)
		s.log.Warn("locator: unsigned "+what+" refused", "from", w.RemoteAddr().String(), "zone", r.Question[0].Name)
		w.WriteMsg(m)
		return false
	}
	err := w.TsigStatus()
	if err == nil {
		return true
	}
	s.stats.refused.Add(1)
	s.log.Warn("locator: "+what+" with bad TSIG refused", "from", w.RemoteAddr().String(), "key", t.Hdr.Name, "err", err)
	m.Rcode = dns.RcodeNotAuth
	tsigErr := uint16(dns.RcodeBadSig)
	switch {
	case errors.Is(err, dns.ErrSecret):
		tsigErr = dns.RcodeBadKey
	case errors.Is(err, dns.ErrTime):
		tsigErr = dns.RcodeBadTime
	}
	// RFC 8945 5.3.2: an unsigned reply carrying a TSIG record with the error.
	m.Extra = append(m.Extra, &dns.TSIG{
		Hdr:       dns.RR_Header{Name: t.Hdr.Name, Rrtype: dns.TypeTSIG, Class: dns.ClassANY},
		Algorithm: t.Algorithm, TimeSigned: t.TimeSigned, Fudge: t.Fudge, OrigId: r.Id, Error: tsigErr,
	})
	if b, err := m.Pack(); err == nil {
		w.Write(b)
	}
	return false
}

// reply sends m, signed when the request was (with a verified key).
func (s *Server) reply(w dns.ResponseWriter, r, m *dns.Msg) {
	if t := r.IsTsig(); t != nil && w.TsigStatus() == nil {
		m.SetTsig(t.Hdr.Name, t.Algorithm, fudge, time.Now().Unix())
	}
	if err := w.WriteMsg(m); err != nil {
		s.log.Debug("locator: write reply", "err", err)
	}
}

// query answers a standard query from the zone.
func (s *Server) query(w dns.ResponseWriter, r *dns.Msg) {
	s.stats.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	name := dns.CanonicalName(q.Name)
	z := s.zone.Load()
	if r.IsTsig() != nil && w.TsigStatus() != nil {
		s.checkTsig(w, r, "query")
		return
	}
	size := dns.MinMsgSize
	if opt := r.IsEdns0(); opt != nil {
		if opt.Version() != 0 {
			m.Rcode = dns.RcodeBadVers
			m.SetEdns0(udpSize, false)
			s.reply(w, r, m)
			return
		}
		size = max(int(min(opt.UDPSize(), udpSize)), dns.MinMsgSize)
		m.SetEdns0(udpSize, false)
	}
	if isTCP(w) {
		size = dns.MaxMsgSize
	}
	switch {
	case q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY, !inZone(name, z.origin):
		m.Rcode = dns.RcodeRefused
	default:
		m.Authoritative = true
		m.Answer = z.get(name, q.Qtype)
		if len(m.Answer) == 0 {
			if !z.exists(name) {
				m.Rcode = dns.RcodeNameError
			}
			soa := dns.Copy(z.soa).(*dns.SOA)
			soa.Hdr.Ttl = min(soa.Hdr.Ttl, soa.Minttl)
			m.Ns = []dns.RR{soa}
		}
		for _, rr := range m.Answer {
			var target string
			switch rr := rr.(type) {
			case *dns.SRV:
				target = rr.Target
			case *dns.NS:
				target = rr.Ns
			}
			if target != "" && inZone(target, z.origin) {
				m.Extra = append(m.Extra, z.get(target, dns.TypeAAAA)...)
				m.Extra = append(m.Extra, z.get(target, dns.TypeA)...)
			}
		}
	}
	m.Truncate(size)
	s.reply(w, r, m)
}

// transfer serves a zone transfer (AXFR; IXFR is answered with the whole zone, as RFC 1995
// allows) to a client with a valid TSIG key, over TCP. Over UDP an IXFR gets the SOA only
// (telling the client to use TCP) and an AXFR is refused.
func (s *Server) transfer(w dns.ResponseWriter, r *dns.Msg) {
	if !s.checkTsig(w, r, "transfer") {
		return
	}
	z := s.zone.Load()
	q := r.Question[0]
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	switch {
	case dns.CanonicalName(q.Name) != z.origin:
		m.Rcode = dns.RcodeNotAuth
	case !isTCP(w) && q.Qtype == dns.TypeIXFR:
		m.Answer = []dns.RR{z.soa}
	case !isTCP(w):
		m.Rcode = dns.RcodeRefused
	}
	if m.Rcode != dns.RcodeSuccess || !isTCP(w) {
		s.reply(w, r, m)
		return
	}
	s.stats.transfers.Add(1)
	s.log.Info("locator: zone transfer", "to", w.RemoteAddr().String(), "key", r.IsTsig().Hdr.Name, "serial", z.soa.Serial)
	rrs := append(z.all(), z.soa)
	const chunk = 16 << 10
	for len(rrs) > 0 {
		n, size := 0, 0
		for n < len(rrs) && (n == 0 || size+dns.Len(rrs[n]) < chunk) {
			size += dns.Len(rrs[n])
			n++
		}
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		m.Answer = rrs[:n]
		rrs = rrs[n:]
		s.reply(w, r, m)
		w.TsigTimersOnly(true)
	}
}
