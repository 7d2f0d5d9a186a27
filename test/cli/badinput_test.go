//go:build linux

package cli

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBadInput runs the binary with bad input for the flags of status, serve and connect:
// each run must exit non-zero at once with one line on stderr naming the problem, nothing
// on stdout, and leave no process and no status socket behind.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	runtimeDir := filepath.Join(dir, "run")
	svc, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	to := svc.Addr().String()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	noDNS := udp.LocalAddr().String()
	udp.Close() // nothing answers there
	aFile := filepath.Join(dir, "file")
	os.WriteFile(aFile, []byte("x"), 0o600)
	const key = "rockudp-key.:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="
	serve := func(extra ...string) []string {
		return append([]string{"serve", "--no-auth", "--to", to, "--listen", "127.0.0.1:0"}, extra...)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "--bogus"}, "unknown flag: --bogus (see rockudp status --help)"},
		{[]string{"status", "extra"}, `unknown command "extra" for "rockudp status"`},
		{serve("--register", "bad..name", "--tsig-key", key), `--register "bad..name"`},
		{serve("--register", "srv.roam.test."), "--register needs a TSIG key"},
		{serve("--register", "srv.roam.test.", "--tsig-key", "nocolon"), "want NAME:BASE64"},
		{serve("--register", "srv.roam.test.", "--tsig-key-file", filepath.Join(dir, "none.key")), "none.key"},
		{serve("--register", "srv.roam.test.", "--tsig-key", key, "--register-ttl", "100ms"), "--register-ttl 100ms"},
		{serve("--register", "srv.roam.test.", "--tsig-key", key, "--locator-server", "nowhere"), `--locator-server "nowhere"`},
		{serve("--register", "srv.roam.test.", "--tsig-key", key, "--locator-server", noDNS, "--locator-zone", "roam.test."),
			"cannot register at " + noDNS},
		{serve("--state-dir", aFile), "--state-dir " + aFile},
		{[]string{"connect", "--server", to, "--stdio", "--locate", "bad..name"}, `--locate "bad..name"`},
		{[]string{"connect", "--server", to, "--stdio", "--locate", "--locator-server", "nowhere"}, `--locator-server "nowhere"`},
		{[]string{"connect", "--server", to, "--stdio", "--locate=a.test.", "stray"}, `unknown command "stray"`},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, rockudpBin, tc.args...)
		cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+runtimeDir)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		msg := stderr.String()
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			t.Errorf("%v: still running after 30 s", tc.args)
		case err == nil:
			t.Errorf("%v: exit code 0", tc.args)
		case stdout.Len() != 0:
			t.Errorf("%v: wrote to stdout: %q", tc.args, stdout.String())
		case strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "rockudp: ") || !strings.Contains(msg, tc.want):
			t.Errorf("%v: stderr %q, want one line naming %q", tc.args, msg, tc.want)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(runtimeDir, "rockudp", "*")); len(left) != 0 {
		t.Errorf("status sockets left behind: %v", left)
	}
}
