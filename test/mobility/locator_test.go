//go:build linux

package mobility

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/locator"
	"github.com/rockudp/rockudp/test/netlab"
)

// The locator scenarios (issue 9): the server's rock agent keeps its name in the DNS current
// (a locator.Registrar following its namespace's addresses) and announces the name; the
// client's rock knows only the DNS server. While the rock is suspended the server moves to
// another network (and in one scenario the client too); the client's rock must find the
// server through the DNS and resume byte-exact.
var (
	locServerNet   = netip.MustParsePrefix("198.51.100.0/25")   // server 198.51.100.2
	locServerMoved = netip.MustParsePrefix("198.51.100.128/25") // server 198.51.100.130
	locClientNet   = netip.MustParsePrefix("192.0.2.0/25")      // client 192.0.2.2
	locClientMoved = netip.MustParsePrefix("192.0.2.128/25")    // client 192.0.2.130
	locDNSNet      = netip.MustParsePrefix("203.0.113.0/25")    // DNS server 203.0.113.2
	locEvilNet     = netip.MustParsePrefix("203.0.113.128/25")  // impostor 203.0.113.130
)

const (
	locZone     = "roam.test."
	locName     = "server.roam.test" // tcprocks.Config.Name takes no final dot
	locDNSAddr  = "203.0.113.2:53"
	locSpoofDNS = "203.0.113.2:54"
	locImpostor = "203.0.113.130:" + serverPort
	locHold     = 5 * time.Second // how long the moving end stays off the network
)

// locWorld is a locator lab: server, client, DNS server (and impostor) hosts on router r.
type locWorld struct {
	lab                     *netlab.Lab
	r, server, client, dnsH *netlab.Host
	serverLink, clientLink  *netlab.Link
	key                     locator.Key
	clientDNS               string // the DNS server the client asks
}

func newLocWorld(t *testing.T) *locWorld {
	lab := netlab.New(t)
	w := &locWorld{lab: lab, r: lab.Router("r"), server: lab.Host("server"), client: lab.Host("client"), dnsH: lab.Host("dns"), clientDNS: locDNSAddr}
	w.serverLink = lab.Connect(w.server, w.r, locServerNet)
	w.clientLink = lab.Connect(w.client, w.r, locClientNet)
	lab.Connect(w.dnsH, w.r, locDNSNet)
	k, err := locator.GenerateKey("rockudp-key")
	if err != nil {
		t.Fatal(err)
	}
	w.key = k
	return w
}

// embeddedDNS runs the embedded locator server for locZone in the DNS host.
func (w *locWorld) embeddedDNS(t *testing.T) {
	var srv *locator.Server
	err := w.dnsH.Do(func() (err error) {
		srv, err = locator.Listen(locDNSAddr, &locator.ServerConfig{Zone: locZone, Keys: []locator.Key{w.key}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
}

// startPair starts the locator agents and waits until the server's name is registered and
// data flows both ways.
func (w *locWorld) startPair(t *testing.T) *pair {
	t.Helper()
	srv := startAgent(t, w.server, roleLocatorServer, "-addr=:"+serverPort, fmt.Sprint("-rate=", rate),
		"-dns="+locDNSAddr, "-zone="+locZone, "-key="+w.key.Name+":"+w.key.Secret, "-name="+locName)
	waitFor(t, "registered server", time.Minute, func() bool { return registeredAs(srv, "198.51.100.2") }, srv)
	cli := startAgent(t, w.client, roleLocatorClient, "-addr=198.51.100.2:"+serverPort, fmt.Sprint("-rate=", rate), "-dns="+w.clientDNS)
	p := &pair{t: t, srv: srv, cli: cli, minFlow: rate}
	t.Cleanup(func() {
		if t.Failed() {
			logAttempts(t, p, 0)
		}
	})
	p.flowing()
	return p
}

// registeredAs reports whether the server agent has registered exactly the address addr.
func registeredAs(srv *proc, addr string) bool {
	for _, l := range srv.events(evRegistered, 0) {
		if l.Err == "" && l.Local == "["+addr+"]" {
			return true
		}
	}
	return false
}

// moveServer is the fault of the server-moved scenarios: the server's link goes down (the
// server leaves its network), and comes back on another network, 198.51.100.130.
func (w *locWorld) moveServer(p *pair, alsoClient bool) outage {
	return outage{
		fault: func() error {
			if alsoClient {
				if err := w.clientLink.Down(); err != nil {
					return err
				}
			}
			return w.serverLink.Down()
		},
		hold: locHold,
		restore: func() error {
			if err := w.serverLink.MoveTo(w.r, locServerMoved); err != nil {
				return err
			}
			if alsoClient {
				return w.clientLink.MoveTo(w.r, locClientMoved)
			}
			return nil
		},
		detectWithin: true,
	}
}

// checkResumedAt fails the test unless every resumption of the client since from reached the
// server at want. It logs the client's reconnection attempts.
func checkResumedAt(t *testing.T, p *pair, from int64, want string) {
	t.Helper()
	logAttempts(t, p, from)
	rs := p.cli.events("resumed", from)
	if len(rs) == 0 {
		t.Errorf("the client did not resume")
	}
	for _, r := range rs {
		if r.Remote != want {
			t.Errorf("the client resumed with %s, want the moved server %s", r.Remote, want)
		}
	}
}

// logAttempts logs the client's reconnection attempts since from (Unix nanoseconds).
func logAttempts(t *testing.T, p *pair, from int64) {
	var tries []string
	for _, r := range p.cli.events("reconnecting", from) {
		if from == 0 {
			from = r.T
		}
		tries = append(tries, fmt.Sprintf("%s at +%v", r.Target, time.Duration(r.T-from).Round(time.Millisecond)))
	}
	t.Logf("client attempts: %s", strings.Join(tries, ", "))
}

// TestLocator runs the locator scenarios in parallel, each in a lab of its own, and writes
// their figures to the report "locator".
func TestLocator(t *testing.T) {
	t.Parallel() // beside TestTunnelDNS, once TestMobility has finished
	report := netlab.NewReport(t, "locator")
	var (
		rowsMu sync.Mutex
		rows   []netlab.Row
	)
	t.Cleanup(func() {
		slices.SortStableFunc(rows, func(a, b netlab.Row) int { return strings.Compare(a.Scenario, b.Scenario) })
		for _, r := range rows {
			report.Add(r)
		}
	})
	add := func(scenario string, m measurement, verified int64, notes ...string) {
		rowsMu.Lock()
		defer rowsMu.Unlock()
		rows = append(rows, netlab.Row{Scenario: scenario, Detection: m.detection, Recovery: m.recovery,
			BytesReplayed: m.replayed, BytesVerified: verified,
			Notes: strings.Join(append(append([]string{"detected by " + m.detectedBy}, m.notes...), notes...), "; ")})
	}
	moved := "198.51.100.130:" + serverPort

	t.Run("L1-server-moved", func(t *testing.T) {
		t.Parallel()
		w := newLocWorld(t)
		w.embeddedDNS(t)
		p := w.startPair(t)
		start := time.Now().UnixNano()
		m := p.inject(w.moveServer(p, false))
		checkResumedAt(t, p, start, moved)
		if !registeredAs(p.srv, "198.51.100.130") {
			t.Errorf("the server's Registrar did not register its new address")
		}
		add("L1. server moved while suspended (embedded DNS server)", m, p.finish(2*time.Minute))
	})

	t.Run("L2-both-moved", func(t *testing.T) {
		t.Parallel()
		w := newLocWorld(t)
		w.bindDNS(t)
		p := w.startPair(t)
		start := time.Now().UnixNano()
		m := p.inject(w.moveServer(p, true))
		checkResumedAt(t, p, start, moved)
		add("L2. both ends moved during one disconnection (BIND 9)", m, p.finish(2*time.Minute))
	})

	t.Run("L3-spoofed-answer", func(t *testing.T) {
		t.Parallel()
		w := newLocWorld(t)
		w.embeddedDNS(t)
		evil := w.lab.Host("evil")
		w.lab.Connect(evil, w.r, locEvilNet)
		spoof := w.spoofingDNS(t)
		w.clientDNS = locSpoofDNS
		p := w.startPair(t)
		imp := startImpostor(t, evil)
		spoof.arm(imp)
		start := time.Now().UnixNano()
		m := p.inject(w.moveServer(p, false))
		checkResumedAt(t, p, start, moved)
		tried := false
		for _, r := range p.cli.events("reconnecting", start) {
			tried = tried || r.Target == locImpostor
		}
		if !tried || imp.resumes.Load() == 0 {
			t.Errorf("the client never tried the spoofed address %s (reconnecting to it: %v; RESUMEs the impostor saw: %d)", locImpostor, tried, imp.resumes.Load())
		}
		if n := imp.after.Load(); n != 0 {
			t.Errorf("the client sent %d bytes to the impostor after its forged challenge (a proof or data)", n)
		}
		note := fmt.Sprintf("%d spoofed answers; the impostor (same EDP announcement, forged CHALLENGE) was tried %d times and got no byte after its challenge", spoof.spoofed.Load(), imp.resumes.Load())
		t.Log(note)
		add("L3. server moved, spoofed DNS answers pointing to an impostor first", m, p.finish(2*time.Minute), note)
	})
}

// impostor is a rocks server at a spoofed address: it presents the real server's EDP
// announcement (public: any probe returns it) and answers every RESUME with a CHALLENGE
// whose proof it cannot compute (docs/protocol.md section 2.2). A client must reject it.
type impostor struct {
	resumes atomic.Int64 // RESUME messages answered
	after   atomic.Int64 // bytes received after the challenge (a client PROOF would be 33)
}

// startImpostor starts the impostor on host, port serverPort, once the real server is up.
func startImpostor(t *testing.T, host *netlab.Host) *impostor {
	imp := &impostor{}
	ln, err := host.Listen("tcp", ":"+serverPort)
	if err != nil {
		t.Fatal(err)
	}
	forge := func(_ edp.Role, peer []byte) ([]byte, any, error) {
		if len(peer) != 50 || peer[0] != 0x02 { // not a RESUME
			return nil, nil, fmt.Errorf("impostor: only RESUME")
		}
		imp.resumes.Add(1)
		ch := make([]byte, 49)
		ch[0] = 0x12
		rand.Read(ch[1:]) // server nonce and a proof made without the key
		return ch, nil, nil
	}
	el := edp.NewListener(ln, &edp.Config{Announcement: impostorAnnouncement(t, host),
		Enhancements: []edp.Enhancement{{Name: "rocks", Version: 1, Hello: forge}}})
	var wg sync.WaitGroup
	t.Cleanup(func() { el.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := el.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(time.Minute))
				buf := make([]byte, 1024)
				for {
					n, err := c.Read(buf)
					imp.after.Add(int64(n))
					if err != nil {
						return
					}
				}
			})
		}
	})
	return imp
}

// impostorAnnouncement probes the real server from host and returns its EDP announcement.
func impostorAnnouncement(t *testing.T, host *netlab.Host) []byte {
	t.Helper()
	var res edp.Result
	err := host.Do(func() (err error) {
		res, err = edp.Probe(t.Context(), "tcp", "198.51.100.2:"+serverPort, nil)
		return err
	})
	if err != nil || len(res.Announcement) == 0 {
		t.Fatalf("impostor: probing the real server: %v (announcement %x)", err, res.Announcement)
	}
	return res.Announcement
}

// spoofer is a DNS server on the client's path: it relays queries to the real one, except
// that once armed it answers the lookups of locName with the impostor's address (SRV, A, no
// AAAA), until the impostor has refused two resumptions.
type spoofer struct {
	imp     atomic.Pointer[impostor]
	spoofed atomic.Int64 // answers forged

	mu sync.Mutex // serialises the relay's exchanges on up
	up net.Conn   // UDP socket to the real server, in the DNS host's namespace
}

func (s *spoofer) arm(imp *impostor) { s.imp.Store(imp) }

// spoofingDNS starts the spoofer on locSpoofDNS in the DNS host.
func (w *locWorld) spoofingDNS(t *testing.T) *spoofer {
	s := &spoofer{}
	var pc net.PacketConn
	err := w.dnsH.Do(func() (err error) {
		if s.up, err = net.Dial("udp", locDNSAddr); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", locSpoofDNS)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serve), NotifyStartedFunc: func() { close(started) }}
	done := make(chan struct{})
	go func() { defer close(done); srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { srv.Shutdown(); <-done; s.up.Close() })
	return s
}

func (s *spoofer) serve(w dns.ResponseWriter, r *dns.Msg) {
	if imp := s.imp.Load(); imp != nil && imp.resumes.Load() < 2 && len(r.Question) == 1 {
		q := r.Question[0]
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		switch {
		case q.Qtype == dns.TypeSRV && q.Name == "_rockudp._tcp."+locName+".":
			m.Answer = []dns.RR{&dns.SRV{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 5},
				Port: 7000, Target: locName + "."}}
		case q.Qtype == dns.TypeA && q.Name == locName+".":
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
				A: net.ParseIP("203.0.113.130")}}
		case q.Qtype == dns.TypeAAAA && q.Name == locName+".":
		default:
			m = nil
		}
		if m != nil {
			s.spoofed.Add(1)
			w.WriteMsg(m)
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	co := &dns.Conn{Conn: s.up}
	s.up.SetDeadline(time.Now().Add(2 * time.Second))
	if err := co.WriteMsg(r); err != nil {
		return
	}
	for { // skip late answers to earlier, timed-out relays
		a, err := co.ReadMsg()
		if err != nil {
			return
		}
		if a.Id == r.Id {
			w.WriteMsg(a)
			return
		}
	}
}

// bindDNS runs BIND 9 in the DNS host as the primary of locZone, accepting updates signed
// with the lab's key.
func (w *locWorld) bindDNS(t *testing.T) {
	startNamed(t, w.dnsH, locDNSAddr, locZone, "ns IN A 203.0.113.2\n", &w.key)
}
