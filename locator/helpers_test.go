package locator

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// patience bounds every wait in the tests; generous for a loaded 2-core machine under -race.
const patience = 20 * time.Second

const testZone = "rock.test."

// testKey returns a fresh key named name.
func testKey(t testing.TB, name string) Key {
	t.Helper()
	k, err := GenerateKey(name)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testLogger returns a logger writing to t.Log (only with -v).
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// startServer starts an embedded server on 127.0.0.1:0 for testZone with key; cfg may
// adjust the rest.
func startServer(t testing.TB, key Key, cfg *ServerConfig) *Server {
	t.Helper()
	c := ServerConfig{}
	if cfg != nil {
		c = *cfg
	}
	if c.Zone == "" {
		c.Zone = testZone
	}
	if c.Keys == nil {
		c.Keys = []Key{key}
	}
	if c.Logger == nil {
		c.Logger = testLogger(t)
	}
	s, err := Listen("127.0.0.1:0", &c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// clientConfig returns a Config for the server at addr.
func clientConfig(addr net.Addr, key *Key) *Config {
	return &Config{Server: addr.String(), Zone: testZone, Key: key, TTL: 30 * time.Second, Timeout: 5 * time.Second}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	t.Cleanup(cancel)
	return ctx
}

// needTool returns the path of an external program, skipping the test when it is missing,
// or failing it when CI=true.
func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
		if p := filepath.Join(dir, name); isExec(p) {
			return p
		}
	}
	msg := fmt.Sprintf("%s not found (Debian packages bind9 and bind9-dnsutils)", name)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// optionalTool returns the path of an external program that enriches a test, or "" when it
// is missing; with CI=true a missing one fails the test.
func optionalTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found (Debian packages bind9 and bind9-dnsutils)", name)
	}
	t.Logf("%s not found: that part of the test is skipped", name)
	return ""
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// ask sends one query to addr over net ("udp" or "tcp") and returns the reply.
func ask(t testing.TB, network string, addr net.Addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr.String())
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

// waitFor polls cond until it holds or patience runs out.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for d := time.Millisecond; !cond(); d = min(2*d, 100*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(d)
	}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func slicesSort(s []string) { slices.Sort(s) }

func slicesJoin(s []string) string { return strings.Join(s, " ") }

func randIntN(n int) int { return rand.IntN(n) }
