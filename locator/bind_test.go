package locator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/rockudp/rockudp/internal/testport"
)

// named is a BIND 9 server started by a test.
type named struct {
	addr *net.UDPAddr // UDP and TCP
	dir  string
	cmd  *exec.Cmd
	log  *syncBuffer
	exit chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// freePort returns a port that was free for both UDP and TCP on 127.0.0.1 a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	return testport.Free(t)
}

// startNamed starts named with the given key and zone statements ({dir} in zones is the
// working directory) on a free port of 127.0.0.1 and waits until it answers a query for
// zone's SOA; it is killed at cleanup. port 0 picks a free port.
func startNamed(t testing.TB, port int, key Key, zones string) *named {
	t.Helper()
	bin := needTool(t, "named")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "key.conf"), AppendKey(nil, key), 0o600); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; ; attempt++ {
		p := port
		if p == 0 {
			p = freePort(t)
		}
		conf := fmt.Sprintf(`include "%[1]s/key.conf";
options {
	directory "%[1]s";
	pid-file "%[1]s/named.pid";
	session-keyfile "%[1]s/session.key";
	managed-keys-directory "%[1]s";
	listen-on port %[2]d { 127.0.0.1; };
	listen-on-v6 { none; };
	recursion no;
	dnssec-validation no;
	notify no;
};
controls { };
`, dir, p) + strings.ReplaceAll(zones, "{dir}", dir)
		confPath := filepath.Join(dir, "named.conf")
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		n := &named{addr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p}, dir: dir, log: &syncBuffer{}, exit: make(chan error, 1)}
		n.cmd = exec.Command(bin, "-g", "-n", "1", "-c", confPath)
		n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
		if err := n.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { n.exit <- n.cmd.Wait() }()
		err := n.waitReady()
		if err == nil {
			t.Cleanup(func() {
				n.cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-n.exit:
				case <-time.After(patience):
					n.cmd.Process.Kill()
					<-n.exit
				}
				if t.Failed() {
					t.Logf("named log:\n%s", n.log.String())
				}
			})
			return n
		}
		n.cmd.Process.Kill()
		<-n.exit
		if port != 0 || attempt == 2 || !strings.Contains(n.log.String(), "address in use") {
			t.Fatalf("named did not start: %v\n%s", err, n.log.String())
		}
	}
}

// waitReady polls named with a query until it answers or exits.
func (n *named) waitReady() error {
	deadline := time.Now().Add(patience)
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	for d := 10 * time.Millisecond; time.Now().Before(deadline); d = min(2*d, 200*time.Millisecond) {
		select {
		case err := <-n.exit:
			n.exit <- err
			return fmt.Errorf("named exited: %v", err)
		default:
		}
		m := new(dns.Msg)
		m.SetQuestion("version.bind.", dns.TypeTXT)
		m.Question[0].Qclass = dns.ClassCHAOS
		if _, _, err := c.Exchange(m, n.addr.String()); err == nil {
			return nil
		}
		time.Sleep(d)
	}
	return errors.New("named did not answer in time")
}

// primaryZone is a named.conf zone statement for a dynamic primary of testZone.
func primaryZone(t testing.TB, dir string, key Key) string {
	const zone = `$TTL 60
@ IN SOA ns.rock.test. hostmaster.rock.test. 1 3600 600 604800 30
@ IN NS ns.rock.test.
ns IN A 127.0.0.1
`
	if err := os.WriteFile(filepath.Join(dir, "rock.test.db"), []byte(zone), 0o644); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`zone "rock.test" { type primary; file "%s/rock.test.db"; allow-update { key %s; }; allow-transfer { key %s; }; };`, dir, key.Name, key.Name)
}

// dig runs dig with args and returns its output.
func dig(t testing.TB, args ...string) string {
	t.Helper()
	bin := needTool(t, "dig")
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// digShort returns dig +short's answer lines for name and type at addr, sorted.
func digShort(t testing.TB, addr *net.UDPAddr, name, qtype string) string {
	out := dig(t, "+short", "+norec", "+time=5", "+tries=2", "-p", fmt.Sprint(addr.Port), "@"+addr.IP.String(), name, qtype)
	lines := strings.Fields(strings.ReplaceAll(out, " ", "_"))
	slicesSort(lines)
	return strings.ReplaceAll(strings.Join(lines, " "), "_", " ")
}

func TestBINDRegisterLookup(t *testing.T) {
	key := testKey(t, "rock-key")
	dir := t.TempDir()
	n := startNamed(t, 0, key, primaryZone(t, dir, key))
	_ = dir
	cfg := &Config{Server: n.addr.String(), Key: &key, TTL: 20 * time.Second, Timeout: 5 * time.Second} // zone found by SOA query
	ctx := ctxT(t)
	if err := Register(ctx, cfg, "node1.rock.test", 7000, addrs("192.0.2.10", "2001:db8::10")); err != nil {
		t.Fatal(err)
	}
	if got := digShort(t, n.addr, "node1.rock.test", "A"); got != "192.0.2.10" {
		t.Fatalf("dig A = %q", got)
	}
	if got := digShort(t, n.addr, "node1.rock.test", "AAAA"); got != "2001:db8::10" {
		t.Fatalf("dig AAAA = %q", got)
	}
	if got := digShort(t, n.addr, "_rockudp._tcp.node1.rock.test", "SRV"); got != "0 0 7000 node1.rock.test." {
		t.Fatalf("dig SRV = %q", got)
	}
	out := dig(t, "+norec", "-p", fmt.Sprint(n.addr.Port), "@127.0.0.1", "node1.rock.test", "A")
	if !strings.Contains(out, "\t20\tIN\tA\t192.0.2.10") {
		t.Fatalf("TTL not 20:\n%s", out)
	}
	got, err := Lookup(ctx, cfg, "node1.rock.test")
	if err != nil || strings.Join(got, " ") != "[2001:db8::10]:7000 192.0.2.10:7000" {
		t.Fatalf("Lookup = %v, %v", got, err)
	}
	// Replace, then remove.
	if err := Register(ctx, cfg, "node1.rock.test", 7001, addrs("198.51.100.1")); err != nil {
		t.Fatal(err)
	}
	if got := digShort(t, n.addr, "node1.rock.test", "A") + "|" + digShort(t, n.addr, "node1.rock.test", "AAAA"); got != "198.51.100.1|" {
		t.Fatalf("after replace dig = %q", got)
	}
	if err := Deregister(ctx, cfg, "node1.rock.test"); err != nil {
		t.Fatal(err)
	}
	if got := digShort(t, n.addr, "_rockudp._tcp.node1.rock.test", "SRV") + digShort(t, n.addr, "node1.rock.test", "A"); got != "" {
		t.Fatalf("after Deregister dig = %q", got)
	}
	if got, err := Lookup(ctx, cfg, "node1.rock.test"); err != nil || len(got) != 0 {
		t.Fatalf("after Deregister Lookup = %v, %v", got, err)
	}
}

func TestBINDRefusesBadUpdates(t *testing.T) {
	key := testKey(t, "rock-key")
	n := startNamed(t, 0, key, primaryZone(t, t.TempDir(), key))
	ctx := ctxT(t)
	wrong := testKey(t, "rock-key")
	unknown := testKey(t, "other-key")
	for _, k := range []*Key{&wrong, &unknown} {
		cfg := &Config{Server: n.addr.String(), Zone: testZone, Key: k, Timeout: 5 * time.Second}
		err := Register(ctx, cfg, "node1.rock.test", 7000, addrs("192.0.2.10"))
		var de *Error
		if !errors.As(err, &de) || de.Rcode != dns.RcodeNotAuth {
			t.Fatalf("key %s: Register = %v, want NOTAUTH", k.Name, err)
		}
		t.Logf("key %s: %v", k.Name, err)
	}
	// Unsigned, by hand.
	m := new(dns.Msg)
	m.SetUpdate(testZone)
	rr, _ := dns.NewRR("node1.rock.test. 30 IN A 192.0.2.10")
	m.Insert([]dns.RR{rr})
	r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, n.addr.String())
	if err != nil || r.Rcode != dns.RcodeRefused {
		t.Fatalf("unsigned update: %v %v", r, err)
	}
	if got := digShort(t, n.addr, "node1.rock.test", "A"); got != "" {
		t.Fatalf("zone changed: %q", got)
	}
}

func TestBINDSecondaryTransfersEmbeddedZone(t *testing.T) {
	needTool(t, "named")
	key := testKey(t, "rock-key")
	port := freePort(t)
	dir := t.TempDir()
	s := startServer(t, key, &ServerConfig{File: filepath.Join(dir, "rock.test.zone"),
		Notify: []string{fmt.Sprintf("127.0.0.1:%d", port)}})
	cfg := clientConfig(s.Addr(), &key)
	ctx := ctxT(t)
	if err := Register(ctx, cfg, "node1.rock.test", 7000, addrs("192.0.2.10", "2001:db8::10")); err != nil {
		t.Fatal(err)
	}
	// Our zone file is a zone file BIND accepts.
	if checkzone := optionalTool(t, "named-checkzone"); checkzone != "" {
		out, err := exec.Command(checkzone, "rock.test", filepath.Join(dir, "rock.test.zone")).CombinedOutput()
		if err != nil {
			t.Fatalf("named-checkzone: %v\n%s", err, out)
		}
	}
	emb := s.Addr().(*net.UDPAddr)
	n := startNamed(t, port, key, fmt.Sprintf(`zone "rock.test" {
	type secondary;
	primaries { 127.0.0.1 port %d key %s; };
	file "{dir}/secondary.db";
	masterfile-format text;
	allow-notify { 127.0.0.1; };
};`, emb.Port, key.Name))
	waitFor(t, "the secondary to transfer the zone", func() bool {
		return digShort(t, n.addr, "node1.rock.test", "A") == "192.0.2.10"
	})
	if got := digShort(t, n.addr, "_rockudp._tcp.node1.rock.test", "SRV"); got != "0 0 7000 node1.rock.test." {
		t.Fatalf("secondary SRV = %q", got)
	}
	// A change reaches the secondary through NOTIFY (its refresh timer is an hour).
	if err := Register(ctx, cfg, "node1.rock.test", 7000, addrs("203.0.113.9")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the secondary to see the change", func() bool {
		return digShort(t, n.addr, "node1.rock.test", "A") == "203.0.113.9"
	})
	if got := digShort(t, n.addr, "rock.test", "SOA"); !strings.Contains(got, fmt.Sprintf(" %d ", s.Serial())) {
		t.Fatalf("secondary SOA %q, primary serial %d", got, s.Serial())
	}
	// The server counts a transfer when it has sent it and a NOTIFY when BIND has answered
	// it: either may come after the secondary already answers with the new record.
	waitFor(t, "the transfer and the NOTIFY counted", func() bool {
		st := s.Stats()
		return st.Transfers >= 2 && st.Notifies >= 1
	})
	// Lookup through the secondary.
	got, err := Lookup(ctx, &Config{Server: n.addr.String()}, "node1.rock.test")
	if err != nil || strings.Join(got, " ") != "203.0.113.9:7000" {
		t.Fatalf("Lookup via secondary = %v, %v", got, err)
	}
	// BIND's copy of the zone (a master file it wrote) loads with ParseZone.
	waitFor(t, "the secondary's zone file", func() bool {
		b, err := os.ReadFile(filepath.Join(n.dir, "secondary.db"))
		return err == nil && bytes.Contains(b, []byte("203.0.113.9"))
	})
	b, _ := os.ReadFile(filepath.Join(n.dir, "secondary.db"))
	rrs, err := ParseZone(b, testZone, Limits{})
	if err != nil {
		t.Fatalf("ParseZone(BIND's file): %v\n%s", err, b)
	}
	if len(rrs) != len(s.Records()) {
		t.Fatalf("BIND's copy has %d records, ours %d:\n%s", len(rrs), len(s.Records()), b)
	}
}

func TestDigAXFR(t *testing.T) {
	key := testKey(t, "rock-key")
	s := startServer(t, key, nil)
	cfg := clientConfig(s.Addr(), &key)
	if err := Register(ctxT(t), cfg, "node1.rock.test", 7000, addrs("192.0.2.10")); err != nil {
		t.Fatal(err)
	}
	port := fmt.Sprint(s.Addr().(*net.UDPAddr).Port)
	y := "hmac-sha256:" + key.Name + ":" + key.Secret
	out := dig(t, "-p", port, "@127.0.0.1", "-y", y, "rock.test", "AXFR")
	if strings.Count(out, "\tSOA\t") != 2 || !strings.Contains(out, "192.0.2.10") || strings.Contains(out, "failed") {
		t.Fatalf("signed AXFR:\n%s", out)
	}
	out = dig(t, "-p", port, "@127.0.0.1", "rock.test", "AXFR")
	if !strings.Contains(out, "Transfer failed") {
		t.Fatalf("unsigned AXFR:\n%s", out)
	}
	wrong := testKey(t, "rock-key")
	b, _ := exec.Command(needTool(t, "dig"), "-p", port, "@127.0.0.1", "-y", "hmac-sha256:"+wrong.Name+":"+wrong.Secret, "rock.test", "AXFR").CombinedOutput()
	if out = string(b); strings.Contains(out, "192.0.2.10") {
		t.Fatalf("AXFR with a wrong key:\n%s", out)
	}
	if st := s.Stats(); st.Transfers != 1 || st.Refused != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// nsupdate runs nsupdate with args and script and returns its output and error.
func nsupdate(t testing.TB, script string, args ...string) (string, error) {
	t.Helper()
	bin := needTool(t, "nsupdate")
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestNsupdateEmbedded(t *testing.T) {
	key := testKey(t, "rock-key")
	s := startServer(t, key, nil)
	port := s.Addr().(*net.UDPAddr).Port
	y := "hmac-sha256:" + key.Name + ":" + key.Secret
	keyFile := filepath.Join(t.TempDir(), "rock.key")
	if err := WriteKey(keyFile, key); err != nil {
		t.Fatal(err)
	}
	script := func(body string) string {
		return fmt.Sprintf("server 127.0.0.1 %d\nzone rock.test\n%s\nsend\nanswer\n", port, body)
	}
	ctx := ctxT(t)
	cfg := clientConfig(s.Addr(), nil)
	cfg.DefaultPort = 9000

	// -y, over UDP: add addresses and a TXT (no SRV, so Lookup uses the default port).
	out, err := nsupdate(t, script("update add node2.rock.test 60 A 192.0.2.20\nupdate add node2.rock.test 60 AAAA 2001:db8::20\nupdate add node2.rock.test 60 TXT \"v=rock1\" \"epoch=7\""), "-y", y)
	if err != nil {
		t.Fatalf("nsupdate -y: %v\n%s", err, out)
	}
	if got, err := Lookup(ctx, cfg, "node2.rock.test"); err != nil || strings.Join(got, " ") != "[2001:db8::20]:9000 192.0.2.20:9000" {
		t.Fatalf("Lookup = %v, %v", got, err)
	}
	if got := digShort(t, s.Addr().(*net.UDPAddr), "node2.rock.test", "TXT"); got != `"v=rock1" "epoch=7"` {
		t.Fatalf("dig TXT = %q", got)
	}
	// -k with our key file, over TCP (-v): prerequisites and deletions.
	out, err = nsupdate(t, script("prereq yxdomain node2.rock.test\nprereq yxrrset node2.rock.test A 192.0.2.20\nupdate delete node2.rock.test AAAA\nupdate delete node2.rock.test TXT \"v=rock1\" \"epoch=7\"\nupdate add _rockudp._tcp.node2.rock.test 60 SRV 0 0 7002 node2.rock.test."), "-v", "-k", keyFile)
	if err != nil {
		t.Fatalf("nsupdate -k -v: %v\n%s", err, out)
	}
	if got, err := Lookup(ctx, cfg, "node2.rock.test"); err != nil || strings.Join(got, " ") != "192.0.2.20:7002" {
		t.Fatalf("Lookup = %v, %v", got, err)
	}
	// Failing prerequisites change nothing.
	serial := s.Serial()
	for _, pre := range []string{"prereq nxdomain node2.rock.test", "prereq nxrrset node2.rock.test A", "prereq yxrrset node2.rock.test A 192.0.2.99", "prereq yxdomain nope.rock.test"} {
		out, err = nsupdate(t, script(pre+"\nupdate add node2.rock.test 60 A 192.0.2.21"), "-y", y)
		if err == nil {
			t.Fatalf("%s: nsupdate succeeded:\n%s", pre, out)
		}
	}
	if s.Serial() != serial {
		t.Fatal("a failed prerequisite changed the zone")
	}
	// Unsigned and wrongly signed updates are refused.
	out, err = nsupdate(t, script("update add evil.rock.test 60 A 192.0.2.66"))
	if err == nil || !strings.Contains(out, "REFUSED") {
		t.Fatalf("unsigned nsupdate: %v\n%s", err, out)
	}
	wrong := testKey(t, "rock-key")
	out, err = nsupdate(t, script("update add evil.rock.test 60 A 192.0.2.66"), "-y", "hmac-sha256:"+wrong.Name+":"+wrong.Secret)
	if err == nil {
		t.Fatalf("nsupdate with a wrong key succeeded:\n%s", out)
	}
	t.Logf("wrong key: %s", out)
	if r := ask(t, "udp", s.Addr(), "evil.rock.test.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("evil.rock.test exists: %v", r)
	}
	// Delete the whole name: the A goes; the SRV below it stays, so the name still exists.
	if out, err = nsupdate(t, script("update delete node2.rock.test"), "-y", y); err != nil {
		t.Fatalf("delete name: %v\n%s", err, out)
	}
	if r := ask(t, "udp", s.Addr(), "node2.rock.test.", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Fatalf("node2 A after delete: %v", r)
	}
	if out, err = nsupdate(t, script("update delete _rockudp._tcp.node2.rock.test"), "-y", y); err != nil {
		t.Fatalf("delete name: %v\n%s", err, out)
	}
	if r := ask(t, "udp", s.Addr(), "node2.rock.test.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("node2 still exists: %v", r)
	}
	// Deleting everything at the apex leaves SOA and NS.
	if out, err = nsupdate(t, script("update delete rock.test"), "-y", y); err != nil {
		t.Fatalf("delete apex: %v\n%s", err, out)
	}
	if r := ask(t, "udp", s.Addr(), "rock.test.", dns.TypeNS); len(r.Answer) != 1 {
		t.Fatalf("NS gone: %v", r)
	}
}

// TestBINDRegistrar runs a Registrar against BIND: registration, an address change, removal.
func TestBINDRegistrar(t *testing.T) {
	key := testKey(t, "rock-key")
	n := startNamed(t, 0, key, primaryZone(t, t.TempDir(), key))
	var host hostAddrs
	host.set("192.0.2.1")
	onUpdate, ch := updates()
	r, err := NewRegistrar(&Config{Server: n.addr.String(), Key: &key, Timeout: 5 * time.Second},
		Registration{Name: "m.rock.test", Port: 7000, Addrs: host.get, OnUpdate: onUpdate})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if st := next(t, ch); st.Err != nil {
		t.Fatal(st.Err)
	}
	if got := digShort(t, n.addr, "m.rock.test", "A"); got != "192.0.2.1" {
		t.Fatalf("dig = %q", got)
	}
	host.set("192.0.2.2", "2001:db8::2")
	r.Changed()
	if st := next(t, ch); st.Err != nil {
		t.Fatal(st.Err)
	}
	if got := digShort(t, n.addr, "m.rock.test", "A") + " " + digShort(t, n.addr, "m.rock.test", "AAAA"); got != "192.0.2.2 2001:db8::2" {
		t.Fatalf("dig after change = %q", got)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if got := digShort(t, n.addr, "m.rock.test", "A") + digShort(t, n.addr, "_rockudp._tcp.m.rock.test", "SRV"); got != "" {
		t.Fatalf("dig after Close = %q", got)
	}
}
