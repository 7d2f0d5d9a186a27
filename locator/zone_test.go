package locator

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// bindStyleZone is a zone file as people write them for BIND: relative names, $TTL,
// $ORIGIN, comments, parentheses, mixed case.
const bindStyleZone = `$TTL 60
$ORIGIN rock.test.
@	IN SOA ns hostmaster (
		7       ; serial
		3600 600 604800 30 )
	IN NS ns
ns	IN A 127.0.0.1
Node1	30 IN A 192.0.2.10
node1	30 IN AAAA 2001:db8::10
_rockudp._tcp.node1 30 IN SRV 0 0 7000 node1
node1	IN TXT "v=rock1" "epoch=7"
node1	IN A 192.0.2.10 ; a duplicate: its TTL replaces the first one's
`

func TestParseZone(t *testing.T) {
	rrs, err := ParseZone([]byte(bindStyleZone), "rock.test", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, rr := range rrs {
		got = append(got, rr.String())
	}
	want := []string{
		"rock.test.\t60\tIN\tSOA\tns.rock.test. hostmaster.rock.test. 7 3600 600 604800 30",
		"rock.test.\t60\tIN\tNS\tns.rock.test.",
		"_rockudp._tcp.node1.rock.test.\t30\tIN\tSRV\t0 0 7000 node1.rock.test.",
		"node1.rock.test.\t60\tIN\tA\t192.0.2.10",
		"node1.rock.test.\t60\tIN\tTXT\t\"v=rock1\" \"epoch=7\"",
		"node1.rock.test.\t30\tIN\tAAAA\t2001:db8::10",
		"ns.rock.test.\t60\tIN\tA\t127.0.0.1",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// AppendZone writes what ParseZone reads back unchanged.
	b := AppendZone(nil, rrs)
	again, err := ParseZone(b, "rock.test.", Limits{})
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if !bytes.Equal(AppendZone(nil, again), b) {
		t.Fatalf("round trip changed the zone:\n%s\n%s", b, AppendZone(nil, again))
	}
	// BIND reads it too.
	if checkzone := optionalTool(t, "named-checkzone"); checkzone != "" {
		p := filepath.Join(t.TempDir(), "zone")
		os.WriteFile(p, b, 0o644)
		if out, err := exec.Command(checkzone, "rock.test", p).CombinedOutput(); err != nil {
			t.Fatalf("named-checkzone: %v\n%s", err, out)
		}
	}
}

func TestParseZoneRejects(t *testing.T) {
	soa := "rock.test. 60 IN SOA ns.rock.test. h.rock.test. 1 2 3 4 5\n"
	tests := []struct {
		name, zone string
		lim        Limits
		is         error
	}{
		{"no SOA", "a.rock.test. 60 IN A 192.0.2.1\n", Limits{}, nil},
		{"two SOA", soa + "rock.test. 60 IN SOA ns.rock.test. h.rock.test. 2 2 3 4 5\n", Limits{}, nil},
		{"SOA elsewhere", "a.rock.test. 60 IN SOA ns.rock.test. h.rock.test. 1 2 3 4 5\n", Limits{}, nil},
		{"out of zone", soa + "a.other.test. 60 IN A 192.0.2.1\n", Limits{}, ErrInvalidName},
		{"bad name", soa + "a\\ b.rock.test. 60 IN A 192.0.2.1\n", Limits{}, ErrInvalidName},
		{"wildcard", soa + "*.rock.test. 60 IN A 192.0.2.1\n", Limits{}, ErrInvalidName},
		{"CNAME", soa + "a.rock.test. 60 IN CNAME b.rock.test.\n", Limits{}, nil},
		{"NS below apex", soa + "a.rock.test. 60 IN NS b.rock.test.\n", Limits{}, nil},
		{"class CH", soa + "a.rock.test. 60 CH A 192.0.2.1\n", Limits{}, nil},
		{"include", soa + "$INCLUDE /etc/passwd\n", Limits{}, nil},
		{"syntax", soa + "a.rock.test. 60 IN A 300.0.2.1\n", Limits{}, nil},
		{"per name", soa + "a.rock.test. 60 IN A 192.0.2.1\na.rock.test. 60 IN A 192.0.2.2\n", Limits{RecordsPerName: 1}, ErrTooManyRecords},
		{"names", soa + "a.rock.test. 60 IN A 192.0.2.1\nb.rock.test. 60 IN A 192.0.2.2\n", Limits{Names: 1}, ErrTooManyRecords},
		{"generate", soa + "$GENERATE 1-1000 h$ A 192.0.2.1\n", Limits{Names: 100}, ErrTooManyRecords},
		{"file size", soa, Limits{FileSize: 10}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseZone([]byte(tc.zone), testZone, tc.lim)
			if err == nil || (tc.is != nil && !errors.Is(err, tc.is)) || !strings.HasPrefix(err.Error(), "locator: ") {
				t.Fatalf("err = %v, want %v", err, tc.is)
			}
		})
	}
}

// TestServerPersists restarts a server on its zone file and finds every change there, the
// serial included.
func TestServerPersists(t *testing.T) {
	key := testKey(t, "rock-key")
	file := filepath.Join(t.TempDir(), "rock.test.zone")
	s := startServer(t, key, &ServerConfig{File: file})
	cfg := clientConfig(s.Addr(), &key)
	ctx := ctxT(t)
	for i, a := range []string{"192.0.2.1", "192.0.2.2"} {
		if err := Register(ctx, cfg, "n"+string(rune('1'+i))+".rock.test", 7000, addrs(a)); err != nil {
			t.Fatal(err)
		}
	}
	serial, records := s.Serial(), AppendZone(nil, s.Records())
	if serial != 3 {
		t.Fatalf("serial %d after two updates, want 3", serial)
	}
	st, err := os.Stat(file)
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("zone file: %v %v", st, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := startServer(t, key, &ServerConfig{File: file})
	if s2.Serial() != serial || !bytes.Equal(AppendZone(nil, s2.Records()), records) {
		t.Fatalf("after restart serial %d:\n%s\nwant %d:\n%s", s2.Serial(), AppendZone(nil, s2.Records()), serial, records)
	}
	cfg = clientConfig(s2.Addr(), &key)
	if got, err := Lookup(ctx, cfg, "n2.rock.test"); err != nil || len(got) != 1 || got[0] != "192.0.2.2:7000" {
		t.Fatalf("Lookup after restart = %v, %v", got, err)
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(filepath.Dir(file))
	if len(ents) != 1 {
		t.Fatalf("directory holds %v", ents)
	}
	// A corrupt file stops the server from starting rather than losing the zone.
	s2.Close()
	os.WriteFile(file, []byte("garbage\n"), 0o644)
	if _, err := Listen("127.0.0.1:0", &ServerConfig{Zone: testZone, File: file}); err == nil {
		t.Fatal("server started on a corrupt zone file")
	}
}

func TestKeyFiles(t *testing.T) {
	k := testKey(t, "Rock-Key")
	if k.Name != "rock-key." || k.Algorithm != dns.HmacSHA256 {
		t.Fatalf("GenerateKey = %+v", k)
	}
	p := filepath.Join(t.TempDir(), "k")
	if err := WriteKey(p, k); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", st.Mode())
	}
	got, err := LoadKey(p)
	if err != nil || got != k {
		t.Fatalf("LoadKey = %+v, %v; want %+v", got, err, k)
	}
	// tsig-keygen's output loads.
	if bin := optionalTool(t, "tsig-keygen"); bin != "" {
		out, err := exec.Command(bin, "-a", "hmac-sha256", "from-bind.").Output()
		if err != nil {
			t.Fatal(err)
		}
		k, err := ParseKey(out)
		if err != nil || k.Name != "from-bind." || k.Algorithm != dns.HmacSHA256 {
			t.Fatalf("ParseKey(tsig-keygen) = %+v, %v\n%s", k, err, out)
		}
	}
	for _, bad := range []string{
		``, `key "k" { algorithm hmac-md5; secret "c2VjcmV0c2VjcmV0c2VjcmV0"; };`,
		`key "k" { algorithm hmac-sha256; secret "short"; };`, `key "k" { secret "x"; `,
		`options { };`, `key "k" { algorithm hmac-sha256; secret "c2VjcmV0c2VjcmV0c2VjcmV0"; /* };`,
	} {
		if _, err := ParseKey([]byte(bad)); err == nil {
			t.Errorf("ParseKey(%q) succeeded", bad)
		}
	}
	good := "# comment\n// another\n/* block */ key k { algorithm hmac-sha512; secret \"c2VjcmV0c2VjcmV0c2VjcmV0\"; };"
	if k, err := ParseKey([]byte(good)); err != nil || k.Algorithm != dns.HmacSHA512 {
		t.Fatalf("ParseKey(%q) = %+v, %v", good, k, err)
	}
}

func TestCanonicalName(t *testing.T) {
	for in, want := range map[string]string{
		"Node1.Rock.Test": "node1.rock.test.", "_rockudp._tcp.x.": "_rockudp._tcp.x.", "a-b.c": "a-b.c.",
	} {
		if got, err := CanonicalName(in); err != nil || got != want {
			t.Errorf("CanonicalName(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", ".", "a..b", "a b.c", `a\.b.c`, "*.c", "é.c", strings.Repeat("a", 64) + ".c",
		strings.Repeat("abcdefghi.", 26)} {
		if _, err := CanonicalName(bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("CanonicalName(%q) = %v", bad, err)
		}
	}
}
