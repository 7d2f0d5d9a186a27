//go:build linux

package cli

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rockudp/rockudp/test/netlab"
)

// The locator lab: a DNS host of its own, and the addresses the ends move to.
var (
	dnsNet        = netip.MustParsePrefix("203.0.113.0/24") // dns 203.0.113.2
	serverFirst   = netip.MustParsePrefix("198.51.100.2/24")
	serverSecond  = netip.MustParsePrefix("198.51.100.77/24")
	serverThird   = netip.MustParsePrefix("198.51.100.99/24")
	clientThird   = netip.MustParsePrefix("192.0.2.88/25")
	locatorServer = "203.0.113.2:53"
	locatorKey    = "rockudp-key.:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="
)

// TestLocateServerMoved: "serve --register" keeps the server's name current in the
// embedded DNS server ("rockudp locator serve" on a host of its own), and "connect
// --locate" looks up the name the server announced when the server's last address is
// dead. curl downloads 100 MiB through the rock while the server moves, and then while
// both ends move during one disconnection; the download is byte-exact and curl never
// notices.
func TestLocateServerMoved(t *testing.T) {
	t.Parallel()
	need(t, "curl")
	w := newWorld(t)
	report := netlab.NewReport(t, "cli-locate")
	dns := w.lab.Host("dns")
	w.lab.Connect(dns, w.r, dnsNet)
	rockudp(t, dns, w.runtimeDir, "locator", "locator", "serve", "--listen", locatorServer, "--zone", "roam.test.",
		"--tsig-key", locatorKey).waitFor("serving zone", lateLimit)

	const size = 100 << 20
	want := w.httpFile(t, size)
	server := w.serve(t, "127.0.0.1:8080", "--register", "server.roam.test.", "--locator-server", locatorServer,
		"--tsig-key", locatorKey)
	conn := rockudp(t, w.client, w.runtimeDir, "connect", "connect", "--server", serverIP+":"+rockPort,
		"--listen", "127.0.0.1:8081", "--psk-file", w.psk, "--log-format", "json",
		"--locate", "--locator-server", locatorServer, "--log-level", "debug")
	conn.waitFor("carrying connections", lateLimit)
	curl := command(w.client, "", "curl", "--silent", "--show-error", "--fail", "-o", "-", "http://127.0.0.1:8081/file")
	m, stderr, wait := stream(t, "curl", curl)
	m.waitBytes(t, 2<<20, lateLimit)

	// The server moves; the client's rock finds it through the DNS.
	resumed, serverResumed := len(events(conn.out.String(), "rock resumed")), len(events(server.out.String(), "rock resumed"))
	m.measureGaps()
	fault := time.Now()
	if err := w.serverLink.ChangeAddr(serverFirst, serverSecond); err != nil {
		t.Fatal(err)
	}
	row := w.recovery(t, "locate: server moved", fault, fault, resumed, serverResumed, m, conn.out.String, server.out.String)
	checkRemote(t, conn.out.String(), serverSecond.Addr())
	logAttempts(t, conn.out.String(), fault)
	report.Add(row)

	// Both move while the client's link is silent: the client's last address for the server
	// and the server's for the client are both dead when the link returns.
	resumed, serverResumed = len(events(conn.out.String(), "rock resumed")), len(events(server.out.String(), "rock resumed"))
	m.measureGaps()
	fault = time.Now()
	if err := w.clientLink.BlockAll(true); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, conn.out.String, "rock suspended", len(events(conn.out.String(), "rock suspended"))+1, lateLimit)
	if err := w.serverLink.ChangeAddr(serverSecond, serverThird); err != nil {
		t.Fatal(err)
	}
	if err := w.clientLink.ChangeAddr(clientFirst, clientThird); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	if err := w.clientLink.BlockAll(false); err != nil {
		t.Fatal(err)
	}
	row = w.recovery(t, "locate: both ends moved during one disconnection", fault, restored, resumed, serverResumed,
		m, conn.out.String, server.out.String)
	checkRemote(t, conn.out.String(), serverThird.Addr())
	logAttempts(t, conn.out.String(), restored)
	report.Add(row)
	t.Logf("rockudp status on the client:\n%s", w.status(t, w.client))
	verify(t, "curl", m, stderr, wait, size, want, "a server move and a move of both ends")
}

// checkRemote checks that the client's last resumption reached the server at addr.
func checkRemote(t *testing.T, logs string, addr netip.Addr) {
	t.Helper()
	ev := events(logs, "rock resumed")
	got := ev[len(ev)-1].Remote
	if want := fmt.Sprintf("%s:%s", addr, rockPort); got.String() != want {
		t.Fatalf("the rock resumed at %s, want %s", got, want)
	}
}

// logAttempts logs the client's reconnection attempts since from.
func logAttempts(t *testing.T, logs string, from time.Time) {
	var tries []string
	for _, e := range events(logs, "rock reconnecting") {
		if e.Time.After(from) {
			tries = append(tries, fmt.Sprintf("%s at +%v", e.Target, e.Time.Sub(from).Round(time.Millisecond)))
		}
	}
	t.Logf("client attempts: %s", strings.Join(tries, ", "))
}
