package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rockudp/rockudp/internal/testport"
	"github.com/rockudp/rockudp/internal/testwait"
	"github.com/rockudp/rockudp/locator"
)

const testKey = "rockudp-key.:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="

// freePort returns a loopback address whose UDP and TCP ports were free a moment ago,
// outside the ephemeral range (see internal/testport).
func freePort(t *testing.T) string {
	t.Helper()
	return testport.Addr(t)
}

// TestLocatorServeRegisterLookup drives the three commands together: serve in the
// background, register a name, look it up.
func TestLocatorServeRegisterLookup(t *testing.T) {
	addr := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	var (
		out  bytes.Buffer
		errb syncBuffer // read while the command writes
	)
	root := newRootCmd(&out, &errb)
	root.SetArgs([]string{"locator", "serve", "--listen", addr, "--zone", "roam.test.", "--tsig-key", testKey})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	// Wait until it answers.
	testwait.For(t, "locator serve to answer", func() error {
		_, err := locator.Lookup(context.Background(), &locator.Config{Server: addr, Timeout: 200 * time.Millisecond}, "x.roam.test.")
		if err != nil {
			return fmt.Errorf("%w (stderr %q)", err, errb.String())
		}
		return nil
	})
	got, _, err := run(t, "locator", "register", "--server", addr, "--zone", "roam.test.", "--name", "laptop.roam.test.",
		"--port", "7000", "--addr", "192.0.2.7", "--addr", "2001:db8::7", "--tsig-key", testKey)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "registered laptop.roam.test. port 7000") {
		t.Fatalf("register printed %q", got)
	}
	got, _, err = run(t, "locator", "lookup", "laptop.roam.test.", "--server", addr)
	if err != nil {
		t.Fatal(err)
	}
	if got != "[2001:db8::7]:7000\n192.0.2.7:7000\n" {
		t.Fatalf("lookup printed %q", got)
	}
	// A wrong key is refused, and the records stay.
	_, _, err = run(t, "locator", "register", "--server", addr, "--zone", "roam.test.", "--name", "laptop.roam.test.",
		"--port", "7000", "--addr", "198.51.100.1", "--tsig-key", "rockudp-key.:d3Jvbmc=")
	if err == nil {
		t.Fatal("an update signed with the wrong key was accepted")
	}
	got, _, _ = run(t, "locator", "lookup", "laptop.roam.test.", "--server", addr)
	if strings.Contains(got, "198.51.100.1") {
		t.Fatalf("wrongly signed update changed the zone: %q", got)
	}
}

func TestLocatorBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"locator", "serve", "--listen", "127.0.0.1:0"}, "a TSIG key is required"},
		{[]string{"locator", "serve", "--tsig-key", "nocolon"}, "want NAME:BASE64"},
		{[]string{"locator", "serve", "--tsig-key", "k.:!!!"}, "not base64"},
		{[]string{"locator", "register", "--name", "a.test.", "--tsig-key", testKey}, "--port is required"},
		{[]string{"locator", "register", "--port", "1", "--tsig-key", testKey}, `required flag(s) "name" not set`},
		{[]string{"locator", "register", "--name", "a.test.", "--port", "1", "--addr", "nope", "--tsig-key", testKey}, `--addr "nope"`},
		{[]string{"locator", "lookup"}, "accepts 1 arg(s)"},
	} {
		_, _, err := run(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
