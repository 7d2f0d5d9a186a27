package locator

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestRegisterLookupEmbedded(t *testing.T) {
	key := testKey(t, "rock-key")
	s := startServer(t, key, nil)
	cfg := clientConfig(s.Addr(), &key)
	ctx := ctxT(t)
	if err := Register(ctx, cfg, "node1.rock.test", 7000, addrs("192.0.2.10", "2001:db8::10", "198.51.100.7")); err != nil {
		t.Fatal(err)
	}
	got, err := Lookup(ctx, cfg, "node1.rock.test")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"[2001:db8::10]:7000", "192.0.2.10:7000", "198.51.100.7:7000"}
	if !slices.Equal(got, want) {
		t.Fatalf("Lookup = %v, want %v", got, want)
	}
	// Register replaces: the old addresses go.
	if err := Register(ctx, cfg, "NODE1.rock.test.", 7001, addrs("203.0.113.5")); err != nil {
		t.Fatal(err)
	}
	if got, _ := Lookup(ctx, cfg, "node1.rock.test"); !slices.Equal(got, []string{"203.0.113.5:7001"}) {
		t.Fatalf("after re-register Lookup = %v", got)
	}
	// The records as an ordinary resolver sees them, over UDP and TCP.
	for _, network := range []string{"udp", "tcp"} {
		r := ask(t, network, s.Addr(), "_rockudp._tcp.node1.rock.test.", dns.TypeSRV)
		if !r.Authoritative || len(r.Answer) != 1 || r.Answer[0].(*dns.SRV).Port != 7001 || r.Answer[0].Header().Ttl != 30 {
			t.Fatalf("%s SRV answer: %v", network, r)
		}
		if len(r.Extra) != 1 || r.Extra[0].(*dns.A).A.String() != "203.0.113.5" {
			t.Fatalf("%s SRV additional: %v", network, r.Extra)
		}
	}
	if err := Deregister(ctx, cfg, "node1.rock.test"); err != nil {
		t.Fatal(err)
	}
	if got, err := Lookup(ctx, cfg, "node1.rock.test"); err != nil || len(got) != 0 {
		t.Fatalf("after Deregister Lookup = %v, %v", got, err)
	}
	if st := s.Stats(); st.Updates != 3 || st.Refused != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestServerAnswers(t *testing.T) {
	key := testKey(t, "rock-key")
	s := startServer(t, key, nil)
	cfg := clientConfig(s.Addr(), &key)
	ctx := ctxT(t)
	if err := Register(ctx, cfg, "a.b.rock.test", 7000, addrs("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	serial := s.Serial()
	tests := []struct {
		name      string
		qtype     uint16
		rcode     int
		answers   int
		authority bool
	}{
		{"rock.test.", dns.TypeSOA, dns.RcodeSuccess, 1, false},
		{"rock.test.", dns.TypeNS, dns.RcodeSuccess, 1, false},
		{"ns.rock.test.", dns.TypeA, dns.RcodeSuccess, 1, false},
		{"a.b.rock.test.", dns.TypeA, dns.RcodeSuccess, 1, false},
		{"A.B.Rock.Test.", dns.TypeA, dns.RcodeSuccess, 1, false},
		{"a.b.rock.test.", dns.TypeAAAA, dns.RcodeSuccess, 0, true},    // NODATA
		{"b.rock.test.", dns.TypeA, dns.RcodeSuccess, 0, true},         // empty non-terminal
		{"_tcp.a.b.rock.test.", dns.TypeA, dns.RcodeSuccess, 0, true},  // empty non-terminal
		{"nope.rock.test.", dns.TypeA, dns.RcodeNameError, 0, true},    // NXDOMAIN
		{"x.a.b.rock.test.", dns.TypeTXT, dns.RcodeNameError, 0, true}, // below a leaf
		{"other.test.", dns.TypeA, dns.RcodeRefused, 0, false},         // not our zone
		{"rock.test.", dns.TypeANY, dns.RcodeSuccess, 3 - 1, false},    // SOA + NS
		{"_rockudp._tcp.a.b.rock.test.", dns.TypeSRV, dns.RcodeSuccess, 1, false},
	}
	for _, tc := range tests {
		r := ask(t, "udp", s.Addr(), tc.name, tc.qtype)
		if r.Rcode != tc.rcode || len(r.Answer) != tc.answers || (len(r.Ns) == 1) != tc.authority {
			t.Errorf("%s %s: rcode %s, %d answers, authority %v; want %s, %d, %v", tc.name, dns.TypeToString[tc.qtype],
				dns.RcodeToString[r.Rcode], len(r.Answer), r.Ns, dns.RcodeToString[tc.rcode], tc.answers, tc.authority)
		}
		if tc.rcode != dns.RcodeRefused && !r.Authoritative {
			t.Errorf("%s: not authoritative", tc.name)
		}
		if tc.authority && r.Ns[0].(*dns.SOA).Serial != serial {
			t.Errorf("%s: authority %v", tc.name, r.Ns)
		}
	}
}

// TestUpdateRefused sends updates an attacker could send and checks that none changes the
// zone: unsigned, signed with a wrong secret, with an unknown key, too old, outside the zone,
// of forbidden types, and too many records.
func TestUpdateRefused(t *testing.T) {
	key := testKey(t, "rock-key")
	s := startServer(t, key, &ServerConfig{Limits: Limits{RecordsPerName: 4}})
	addr := s.Addr().String()
	before := s.Serial()

	send := func(t *testing.T, m *dns.Msg, k *Key) *dns.Msg {
		t.Helper()
		c := &dns.Client{Timeout: 5 * time.Second}
		if k != nil {
			c.TsigSecret = map[string]string{k.Name: k.Secret}
		}
		r, _, err := c.Exchange(m, addr)
		if r == nil {
			t.Fatalf("no reply: %v", err)
		}
		return r
	}
	update := func(rrs ...string) *dns.Msg {
		m := new(dns.Msg)
		m.SetUpdate(testZone)
		for _, s := range rrs {
			rr, err := dns.NewRR(s)
			if err != nil {
				t.Fatal(err)
			}
			m.Insert([]dns.RR{rr})
		}
		return m
	}
	sign := func(m *dns.Msg, k Key, when time.Time) *dns.Msg {
		m.SetTsig(k.Name, k.Algorithm, 300, when.Unix())
		return m
	}
	wrong := testKey(t, "rock-key")
	unknown := testKey(t, "other-key")
	tests := []struct {
		name  string
		m     *dns.Msg
		k     *Key
		rcode int
		tsig  uint16 // TSIG error in the reply
	}{
		{"unsigned", update("x.rock.test. 30 IN A 192.0.2.1"), nil, dns.RcodeRefused, 0},
		{"wrong secret", sign(update("x.rock.test. 30 IN A 192.0.2.1"), wrong, time.Now()), &wrong, dns.RcodeNotAuth, dns.RcodeBadSig},
		{"unknown key", sign(update("x.rock.test. 30 IN A 192.0.2.1"), unknown, time.Now()), &unknown, dns.RcodeNotAuth, dns.RcodeBadKey},
		{"stale", sign(update("x.rock.test. 30 IN A 192.0.2.1"), key, time.Now().Add(-time.Hour)), &key, dns.RcodeNotAuth, dns.RcodeBadTime},
		{"not in zone", sign(update("x.other.test. 30 IN A 192.0.2.1"), key, time.Now()), &key, dns.RcodeNotZone, 0},
		{"SOA", sign(update("rock.test. 30 IN SOA a. b. 9 1 1 1 1"), key, time.Now()), &key, dns.RcodeRefused, 0},
		{"NS", sign(update("rock.test. 30 IN NS evil.example."), key, time.Now()), &key, dns.RcodeRefused, 0},
		{"CNAME", sign(update("x.rock.test. 30 IN CNAME evil.example."), key, time.Now()), &key, dns.RcodeRefused, 0},
		{"bad name", sign(update(`x\.y.rock.test. 30 IN A 192.0.2.1`), key, time.Now()), &key, dns.RcodeRefused, 0},
		{"too many", sign(update("x.rock.test. 30 IN A 192.0.2.1", "x.rock.test. 30 IN A 192.0.2.2",
			"x.rock.test. 30 IN A 192.0.2.3", "x.rock.test. 30 IN A 192.0.2.4", "x.rock.test. 30 IN A 192.0.2.5"), key, time.Now()),
			&key, dns.RcodeRefused, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := send(t, tc.m, tc.k)
			if r.Rcode != tc.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
			}
			if tc.tsig != 0 && (r.IsTsig() == nil || r.IsTsig().Error != tc.tsig) {
				t.Fatalf("reply TSIG %v, want error %s", r.IsTsig(), dns.RcodeToString[int(tc.tsig)])
			}
		})
	}
	if s.Serial() != before || len(s.Records()) != 3 {
		t.Fatalf("zone changed: serial %d -> %d, %v", before, s.Serial(), s.Records())
	}
	if st := s.Stats(); st.Refused != uint64(len(tests)) || st.Updates != 0 {
		t.Fatalf("stats %+v", st)
	}
	// The client side reports the refusals as typed errors.
	cfg := clientConfig(s.Addr(), &wrong)
	err := Register(ctxT(t), cfg, "x.rock.test", 7000, addrs("192.0.2.1"))
	var de *Error
	if !errors.As(err, &de) || de.Rcode != dns.RcodeNotAuth {
		t.Fatalf("Register with a wrong key: %v", err)
	}
	cfg.Key = nil
	if err := Register(ctxT(t), cfg, "x.rock.test", 7000, addrs("192.0.2.1")); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Register without a key: %v", err)
	}
	cfg.Key = &key
	if err := Register(ctxT(t), cfg, "x.rock.test", 7000, addrs("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4")); err != nil {
		t.Fatalf("4 addresses (the limit): %v", err)
	}
	err = Register(ctxT(t), cfg, "x.rock.test", 7000, addrs("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5"))
	if !errors.As(err, &de) || de.Rcode != dns.RcodeRefused {
		t.Fatalf("5 addresses: %v", err)
	}
	cfg.MaxRecords = 2
	if err := Register(ctxT(t), cfg, "x.rock.test", 7000, addrs("192.0.2.1", "192.0.2.2", "192.0.2.3")); !errors.Is(err, ErrTooManyRecords) {
		t.Fatalf("3 addresses, MaxRecords 2: %v", err)
	}
}
