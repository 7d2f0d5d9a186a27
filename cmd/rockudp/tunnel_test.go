package main

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// udpEcho is a UDP service that echoes every datagram to its source.
func udpEcho(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().String()
}

// TestTunnelCommands: two local UDP sources → tunnel client → rock → tunnel server → UDP
// echo; each source gets its own replies.
func TestTunnelCommands(t *testing.T) {
	svc := udpEcho(t)
	key := writeKey(t)
	srv, cli, met := freePort(t), freePort(t), freePort(t)
	background(t, "tunnel", "server", "--listen", srv, "--to", svc, "--psk-file", key)
	waitDial(t, srv).Close()
	background(t, "tunnel", "client", "--listen", cli, "--server", srv, "--psk-file", key, "--metrics", met)
	for i := 0; i < 2; i++ {
		c, err := net.Dial("udp", cli)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		want := fmt.Sprintf("datagram from source %d", i)
		buf := make([]byte, 100)
		deadline := time.Now().Add(15 * time.Second)
		for { // the client may still be dialing its rock: retry until an answer comes
			c.Write([]byte(want))
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := c.Read(buf)
			if err == nil {
				if string(buf[:n]) != want {
					t.Fatalf("source %d got %q", i, buf[:n])
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("source %d: no echo through the tunnel: %v", i, err)
			}
		}
	}
	page := scrape(t, met)
	for _, want := range []string{"rockudp_tunnel_flows 2", "rockudp_tunnel_datagrams_in_total",
		`rockudp_tunnel_dropped_datagrams_total{reason="queue-full"} 0`} {
		if !strings.Contains(page, want) {
			t.Errorf("tunnel client metrics lack %q", want)
		}
	}
}

func TestTunnelBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"tunnel", "server", "--to", "127.0.0.1:53"}, "refusing to run an open UDP forwarder"},
		{[]string{"tunnel", "server", "--no-auth"}, "--to HOST:PORT is required"},
		{[]string{"tunnel", "server", "--no-auth", "--to", "127.0.0.1:53", "--max-age", "-1s"}, "must not be negative"},
		{[]string{"tunnel", "client", "--listen", "127.0.0.1:0"}, "--server HOST:PORT is required"},
		{[]string{"tunnel", "client", "--server", "127.0.0.1:1"}, "--listen UDP-ADDR is required"},
		{[]string{"tunnel", "client", "--server", "127.0.0.1:1", "--listen", "127.0.0.1:0"}, "cannot connect to 127.0.0.1:1"},
	} {
		_, _, err := run(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
