package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rockudp/rockudp/internal/relay"
	"github.com/rockudp/rockudp/internal/testwait"
	"github.com/rockudp/rockudp/locator"
)

// startLocatorServer runs the embedded DNS server for zone roam.test. with testKey.
func startLocatorServer(t *testing.T) string {
	t.Helper()
	k, ok, err := (&keyFlags{inline: testKey}).key()
	if err != nil || !ok {
		t.Fatal(err)
	}
	srv, err := locator.Listen("127.0.0.1:0", &locator.ServerConfig{Zone: "roam.test.", Keys: []locator.Key{k}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv.Addr().String()
}

// waitLookup waits until name has addresses at dns and returns them.
func waitLookup(t *testing.T, dns, name string) []string {
	t.Helper()
	var got []string
	testwait.For(t, name+" registered at "+dns, func() error {
		var err error
		got, err = locator.Lookup(context.Background(), &locator.Config{Server: dns}, name)
		if err == nil && len(got) == 0 {
			err = errors.New("no addresses")
		}
		return err
	})
	return got
}

// TestServeRegisterConnectLocate: the client reaches the server through a relay (the
// server's old address); the relay goes away for good (the server "moved"), and the
// rock finds the server through the DNS name serve --register keeps, byte-exact. Then
// serve stops and removes its records.
func TestServeRegisterConnectLocate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		locate []string
	}{
		{"named", []string{"--locate", "srv.roam.test."}},
		{"announced", []string{"--locate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
			dns := startLocatorServer(t)
			svc := echoService(t)
			srv, loc := freePort(t), freePort(t)
			stopServe := backgroundStop(t, "serve", "--listen", srv, "--to", svc, "--no-auth",
				"--register", "srv.roam.test.", "--locator-server", dns, "--tsig-key", testKey)
			if got := waitLookup(t, dns, "srv.roam.test."); len(got) != 1 || got[0] != srv {
				t.Fatalf("lookup: %v, want [%s]", got, srv)
			}
			rl, err := relay.New(srv, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer rl.Close()
			args := append([]string{"connect", "--server", rl.Addr().String(), "--listen", loc,
				"--heartbeat", "100ms", "--locator-server", dns}, tc.locate...)
			background(t, args...)
			c := waitDial(t, loc)
			defer c.Close()
			sent, got := sha256.New(), sha256.New()
			chunk := bytes.Repeat([]byte("moved "), 10000)
			echo := func() {
				t.Helper()
				sent.Write(chunk)
				if _, err := c.Write(chunk); err != nil {
					t.Fatal(err)
				}
				c.SetReadDeadline(time.Now().Add(30 * time.Second))
				if _, err := io.CopyN(got, c, int64(len(chunk))); err != nil {
					t.Fatal(err)
				}
			}
			echo()
			start := time.Now()
			rl.Close() // the old address is dead
			echo()
			t.Logf("%s: first echo after the server moved took %v", tc.name, time.Since(start).Round(time.Millisecond))
			if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
				t.Fatal("echoed bytes differ")
			}
			// The client's end of the rock now talks to the located address directly.
			var client *rockStatus
			for _, p := range statusJSON(t) {
				if p.Command == "connect" && len(p.Rocks) == 1 {
					client = &p.Rocks[0]
				}
			}
			if client == nil || client.Remote != srv || client.Suspensions != 1 || client.PeerName != "srv.roam.test" {
				t.Fatalf("client rock after the move: %+v; want remote %s after one suspension, peer srv.roam.test", client, srv)
			}
			c.Close()
			stopServe()
			if got, err := locator.Lookup(context.Background(), &locator.Config{Server: dns}, "srv.roam.test."); err != nil || len(got) != 0 {
				t.Fatalf("after serve stopped, lookup gives %v, %v; want nothing", got, err)
			}
		})
	}
}

func TestRegisterLocateBadInput(t *testing.T) {
	dns := startLocatorServer(t)
	svc := echoService(t)
	closed, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	noDNS := closed.LocalAddr().String()
	closed.Close()
	reg := func(extra ...string) []string {
		return append([]string{"serve", "--no-auth", "--to", svc, "--listen", "127.0.0.1:0"}, extra...)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{reg("--register", "bad..name", "--tsig-key", testKey, "--locator-server", dns), `--register "bad..name"`},
		{reg("--register", "srv.roam.test."), "--register needs a TSIG key"},
		{reg("--register", "srv.roam.test.", "--tsig-key", "nocolon"), "want NAME:BASE64"},
		{reg("--register", "srv.roam.test.", "--tsig-key", testKey, "--locator-server", "nowhere"), `--locator-server "nowhere"`},
		{reg("--register", "srv.roam.test.", "--tsig-key", testKey, "--locator-server", dns, "--register-ttl", "0s"), "--register-ttl 0s"},
		{reg("--register", "srv.roam.test.", "--tsig-key", "rockudp-key.:d3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3I=", "--locator-server", dns), "cannot register at " + dns},
		{reg("--register", "srv.other.", "--tsig-key", testKey, "--locator-server", dns), "cannot register at " + dns},
		{reg("--register", "srv.roam.test.", "--tsig-key", testKey, "--locator-server", noDNS, "--locator-zone", "roam.test."), "cannot register at " + noDNS},
		{reg("--register", "srv.roam.test.", "--tsig-key", testKey, "--tsig-key-file", "x"), "none of the others can be"},
		{[]string{"connect", "--server", svc, "--stdio", "--locate", "bad..name"}, `--locate "bad..name"`},
		{[]string{"connect", "--server", svc, "--stdio", "--locate", "a.test.", "b.test."}, "unknown command"},
		{[]string{"connect", "--server", svc, "--stdio", "stray"}, "unknown command"},
		{[]string{"connect", "--server", svc, "--stdio", "--locate", "--locator-server", "nowhere"}, `--locator-server "nowhere"`},
	} {
		_, _, err := run(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error spans lines: %q", tc.args, err)
		}
	}
}
