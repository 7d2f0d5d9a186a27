//go:build linux

package mobility

import (
	"context"
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

	"github.com/rockudp/rockudp/locator"
	"github.com/rockudp/rockudp/test/netlab"
)

// Helpers for the scenarios that run programs in the lab (the locator's BIND, the tunnel's
// named, rockudp and dig).

// program is a long-running program started in a lab host; it gets SIGTERM (then SIGKILL
// after 30 s) when the test ends, and its output is logged if the test failed.
type program struct {
	name   string
	out    *lineBuffer
	exited chan struct{}
}

// startProgram starts bin with args in host.
func startProgram(t *testing.T, host *netlab.Host, bin string, args ...string) *program {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := host.Command(ctx, bin, args...)
	p := &program{name: filepath.Base(bin) + " " + strings.Join(args, " "), out: &lineBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			cancel()
			<-p.exited
		}
		cancel()
		if t.Failed() {
			t.Logf("%s (in %s) printed:\n%s", p.name, host.Name(), p.out.String())
		}
	})
	return p
}

// waitOutput waits until the program has printed s; it fails the test if the program exits
// first or after a minute.
func (p *program) waitOutput(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for d := time.Millisecond; !strings.Contains(p.out.String(), s); d = min(2*d, 100*time.Millisecond) {
		select {
		case <-p.exited:
			t.Fatalf("%s exited before printing %q:\n%s", p.name, s, p.out.String())
		case <-time.After(d):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not print %q within a minute:\n%s", p.name, s, p.out.String())
		}
	}
}

// startNamed runs BIND 9 (named) in host on addr (IP:port) as the primary of zone, with the
// given records besides the SOA and NS (ns.<zone>). With key, it accepts updates signed with
// it. It waits until named runs.
func startNamed(t *testing.T, host *netlab.Host, addr, zone, records string, key *locator.Key) {
	t.Helper()
	bin := needProgram(t, "named", "bind9")
	ip, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	db := fmt.Sprintf("$TTL 60\n@ IN SOA ns.%[1]s hostmaster.%[1]s 1 3600 600 86400 5\n@ IN NS ns.%[1]s\n", zone) + records
	var conf, update string
	if key != nil {
		conf = string(locator.AppendKey(nil, *key))
		update = fmt.Sprintf(`allow-update { key "%s"; };`, key.Name)
	}
	conf += fmt.Sprintf(`options {
	directory "%[1]s";
	pid-file "%[1]s/named.pid";
	session-keyfile "%[1]s/session.key";
	managed-keys-directory "%[1]s";
	listen-on port %[2]s { %[3]s; };
	listen-on-v6 { none; };
	recursion no;
	dnssec-validation no;
	notify no;
};
controls { };
zone "%[4]s" { type primary; file "%[1]s/zone.db"; %[5]s };
`, dir, port, ip, zone, update)
	for name, text := range map[string]string{"zone.db": db, "named.conf": conf} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	startProgram(t, host, bin, "-g", "-n", "1", "-c", filepath.Join(dir, "named.conf")).waitOutput(t, "running")
}

// lineBuffer collects a program's output (the first MiB).
type lineBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.b.Len() < 1<<20 {
		b.b.Write(p)
	}
	return len(p), nil
}

func (b *lineBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// needProgram returns the path of an external program from the Debian package pkg; it skips
// the test when the program is missing, or fails it when CI=true.
func needProgram(t *testing.T, name, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin"} {
		if p := filepath.Join(dir, name); exists(p) {
			return p
		}
	}
	msg := fmt.Sprintf("%s not found (Debian package %s)", name, pkg)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func exists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// buildRockudp builds the rockudp command into a directory of the test's and returns its path.
func buildRockudp(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "rockudp")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/rockudp/rockudp/cmd/rockudp").CombinedOutput()
	if err != nil {
		t.Fatalf("building rockudp: %v\n%s", err, out)
	}
	return bin
}
