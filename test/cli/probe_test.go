//go:build linux

package cli

import (
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/rockudp/rockudp/internal/testport"
	"github.com/rockudp/rockudp/internal/testwait"
)

// TestEDPProbeRealServers runs the built binary's "edp probe" as a user would, against
// a real ordinary server (Python's http.server) and a real enhanced one (rockudp serve),
// and against an address where nothing listens.
func TestEDPProbeRealServers(t *testing.T) {
	need(t, "python3")
	probe := func(addr string) (string, string, error) {
		cmd := exec.Command(rockudpBin, "edp", "probe", addr)
		var stdout, stderr lockedBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}

	t.Run("python-http-server", func(t *testing.T) {
		port := strconv.Itoa(testport.Free(t))
		py := exec.Command("python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", t.TempDir(), port)
		var pyOut lockedBuffer
		py.Stdout, py.Stderr = &pyOut, &pyOut
		if err := py.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { py.Wait(); close(exited) }()
		t.Cleanup(func() { py.Process.Kill(); <-exited }) // it has no graceful stop
		addr := net.JoinHostPort("127.0.0.1", port)
		testwait.Within(t, lateLimit, "python3 -m http.server to listen on "+addr, func() error {
			select {
			case <-exited:
				t.Fatalf("python3 -m http.server exited: %s", pyOut.String())
			default:
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			return c.Close()
		})
		out, errOut, err := probe(addr)
		if err != nil {
			t.Fatalf("probe: %v\n%s", err, errOut)
		}
		// http.server reads the request line, meets the half-close and closes.
		if out != "ordinary closed\n" {
			t.Fatalf("got %q, want %q", out, "ordinary closed\n")
		}
	})

	t.Run("rockudp-serve", func(t *testing.T) {
		svc, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer svc.Close()
		psk := filepath.Join(t.TempDir(), "psk")
		if out, err := exec.Command(rockudpBin, "keygen", "-o", psk).CombinedOutput(); err != nil {
			t.Fatalf("keygen: %v: %s", err, out)
		}
		srv := rockudp(t, nil, t.TempDir(), "serve", "serve", "--listen", "127.0.0.1:0",
			"--to", svc.Addr().String(), "--psk-file", psk)
		srv.waitFor("serving rocks on", lateLimit)
		m := regexp.MustCompile(`serving rocks on (\S+) `).FindStringSubmatch(srv.out.String())
		if m == nil {
			t.Fatalf("no address in %q", srv.out.String())
		}
		out, errOut, err := probe(m[1])
		if err != nil {
			t.Fatalf("probe: %v\n%s", err, errOut)
		}
		// The probe needs no key: the announcement is public; the key guards the rock.
		if !strings.HasPrefix(out, "enhanced ") || !strings.Contains(out, "rocks/1") {
			t.Fatalf("got %q, want enhanced with rocks/1", out)
		}
	})

	t.Run("nothing-listening", func(t *testing.T) {
		addr := testport.Addr(t) // nothing listens there
		out, errOut, err := probe(addr)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 {
			t.Fatalf("exit %v, want non-zero", err)
		}
		if out != "" || !strings.Contains(errOut, "cannot probe "+addr) || strings.Count(errOut, "\n") != 1 {
			t.Fatalf("stdout %q, stderr %q; want nothing and one line naming %s", out, errOut, addr)
		}
	})
}
