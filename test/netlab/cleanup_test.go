//go:build linux

package netlab_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rockudp/rockudp/test/netlab"
)

// namespaces returns the names "ip netns list" shows.
func namespaces(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// rootLinks returns the interfaces of the test process's own namespace.
func rootLinks(t *testing.T) []string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	return names
}

// lockFile returns the lock file of the run that made namespace ns.
func lockFile(ns string) string {
	run, _, _ := strings.Cut(strings.TrimPrefix(ns, "netlab-"), "-")
	return filepath.Join("/run/netlab", run+".lock")
}

// gone checks that namespaces, their run's lock file and process pid are gone.
func gone(t *testing.T, names []string, pid int) {
	t.Helper()
	left := namespaces(t)
	for _, ns := range names {
		if slices.Contains(left, ns) {
			t.Errorf("namespace %s is still there", ns)
		}
		if _, err := os.Stat(lockFile(ns)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("lock file %s: %v, want it gone", lockFile(ns), err)
		}
	}
	// A killed process may linger as a zombie until its parent reaps it.
	eventually(t, 10*time.Second, "process in the lab", func() error {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			if state, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(state), ") Z") {
				return fmt.Errorf("process %d still runs", pid)
			}
		}
		return nil
	})
}

// Everything a lab made — namespaces, veth pairs, delay lines, NAT,
// processes — is gone when its test ends, and nothing ever appears in the
// machine's own namespace.
func TestCleanup(t *testing.T) {
	before := rootLinks(t)
	var names []string
	waited := make(chan error, 1)
	var pid int
	t.Run("lab", func(t *testing.T) {
		p := newPair(t)
		nat := p.lab.NAT("nat", p.r, netip.MustParsePrefix("203.0.113.0/24"))
		must(t, p.la.SetDelay(10*time.Millisecond))
		must(t, p.lb.SetLoss(1))
		must(t, p.lb.SetRate(1e9))
		must(t, nat.Uplink().BlockUDP(true))
		cmd := p.a.Command(context.Background(), "sleep", "300")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid = cmd.Process.Pid
		go func() { waited <- cmd.Wait() }()
		names = []string{p.a.Name(), p.b.Name(), p.r.Name(), nat.Router().Name()}
		if live := namespaces(t); !slices.Equal(slices.Sorted(slices.Values(names)), intersect(live, names)) {
			t.Fatalf("namespaces %v, want %v among them", live, names)
		}
		if now := rootLinks(t); !slices.Equal(now, before) {
			t.Errorf("the lab added interfaces to the machine's namespace: %v, was %v", now, before)
		}
	})
	gone(t, names, pid)
	select {
	case err := <-waited:
		if err == nil || !strings.Contains(err.Error(), "killed") {
			t.Errorf("process in the lab ended with %v, want killed", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("process in the lab still runs")
	}
	if now := rootLinks(t); !slices.Equal(now, before) {
		t.Errorf("interfaces of the machine's namespace: %v, was %v", now, before)
	}
}

func intersect(a, b []string) []string {
	var both []string
	for _, s := range a {
		if slices.Contains(b, s) {
			both = append(both, s)
		}
	}
	slices.Sort(both)
	return both
}

// Lab traffic cannot leave the lab: every interface in its namespaces is
// one the lab made, every veth pair has both ends in the lab, the machine's
// own addresses are out of reach, and addresses outside the documentation
// ranges are refused.
func TestIsolation(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	nat := p.lab.NAT("nat", p.r, netip.MustParsePrefix("203.0.113.0/24"))
	must(t, p.la.SetDelay(time.Millisecond))
	run := strings.TrimSuffix(p.a.Name(), "-a") + "-"
	for _, h := range []*netlab.Host{p.a, p.b, p.r, nat.Router()} {
		out, err := h.Run(context.Background(), "ip", "-o", "link")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			name, peer, _ := strings.Cut(strings.Fields(line)[1], "@")
			switch {
			case name == "lo:", name == "d1:" && peer == "" && h == p.r: // loopback, delay line
			case peer != "" && strings.Contains(line, " link-netns "+run):
			default:
				t.Errorf("%s has an interface the lab did not make, or one whose peer is outside the lab: %s", h, line)
			}
		}
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range ifaddrs {
		ip, _ := netip.AddrFromSlice(a.(*net.IPNet).IP)
		ip = ip.Unmap()
		if !ip.IsGlobalUnicast() || netip.MustParsePrefix("192.0.2.0/24").Contains(ip) { // the lab uses that one
			continue
		}
		if _, err := tcpEcho(t, p.a, netip.AddrPortFrom(ip, 22).String(), time.Second); err == nil {
			t.Errorf("the machine's address %v answered from inside the lab", ip)
		}
	}
	for _, bad := range []string{"10.0.0.0/24", "fd00::/64", "192.0.2.0/31"} {
		if err := p.la.ChangeAddr(p.la.Prefixes()[0], netip.MustParsePrefix(bad)); err == nil {
			t.Errorf("ChangeAddr to %s: no error", bad)
		}
	}
}

// Sockets made in Do stay in the namespace; the calling thread comes back.
func TestDo(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	var inside string
	must(t, p.a.Do(func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			inside += i.Name + " "
		}
		return err
	}))
	if inside != "lo eth0 " {
		t.Errorf("interfaces inside a: %q, want lo and eth0", inside)
	}
	root := rootLinks(t)
	for range 20 {
		must(t, p.a.Do(func() error { return nil }))
		if now := rootLinks(t); !slices.Equal(now, root) {
			t.Fatalf("after Do, this goroutine sees interfaces %v, want the machine's %v", now, root)
		}
	}
	// A listener made in a, used from other goroutines, answers in a only.
	ln, err := p.a.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("a listener in a answered from the machine's namespace")
	}
	c, err := p.a.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	if out, err := p.a.Run(context.Background(), "ip", "-o", "addr", "show", "dev", "eth0"); err != nil || !strings.Contains(out, "192.0.2.2/24") {
		t.Errorf("Run ip addr in a: %v\n%s", err, out)
	}
	if _, err := p.a.Run(context.Background(), "false"); err == nil {
		t.Error("Run false: no error")
	}
}

// TestHelperLab is not a test: it is the lab of a helper process that
// the tests below kill. It prints the names of its namespaces and the pid of
// a process running in one, then waits to be killed.
func TestHelperLab(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	p := newPair(t)
	must(t, p.la.SetDelay(5*time.Millisecond))
	var cmd *exec.Cmd
	if mode == "orphan" {
		// Its own session and no parent-death signal: it outlives us, as a
		// daemon a scenario started might.
		cmd = exec.Command("ip", "netns", "exec", p.a.Name(), "sleep", "300")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		cmd = p.a.Command(context.Background(), "sleep", "300")
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("READY %d %s %s %s\n", cmd.Process.Pid, p.a.Name(), p.b.Name(), p.r.Name())
	time.Sleep(time.Minute) // until killed
	t.Fatal("helper lab was not killed")
}

// startHelper runs TestHelperLab in a new process and returns it with the
// pid of the process it runs in the lab and its namespace names.
func startHelper(t *testing.T, mode string) (cmd *exec.Cmd, pid int, names []string) {
	t.Helper()
	cmd = exec.Command(os.Args[0], "-test.run=^TestHelperLab$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 5 && f[0] == "READY" {
			fmt.Sscan(f[1], &pid)
			go io.Copy(io.Discard, stdout)
			return cmd, pid, f[2:]
		}
		t.Logf("helper: %s", sc.Text())
	}
	t.Fatalf("helper ended before its lab was ready: %v", sc.Err())
	return nil, 0, nil
}

// SIGINT (Ctrl-C) runs the lab's cleanup before the process dies.
func TestInterruptCleansUp(t *testing.T) {
	netlab.New(t) // the same root check as the helper
	cmd, pid, names := startHelper(t, "interrupt")
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGINT {
		t.Errorf("helper ended with %v, want killed by SIGINT", err)
	}
	gone(t, names, pid)
}

// Sweep removes what a killed run left: its namespaces, its lock file and
// the processes still running in them.
func TestSweep(t *testing.T) {
	netlab.New(t)
	cmd, pid, names := startHelper(t, "orphan")
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	cmd.Process.Kill()
	cmd.Wait()
	// New in another test process may sweep first; then only the result counts.
	left := intersect(namespaces(t), names)
	removed, err := netlab.Sweep()
	if err != nil {
		t.Fatal(err)
	}
	if want := slices.Sorted(slices.Values(names)); len(left) == len(names) && !slices.Equal(intersect(removed, names), want) {
		t.Errorf("Sweep removed %v, want %v among them", removed, want)
	}
	gone(t, names, pid)
	if again, err := netlab.Sweep(); err != nil || len(intersect(again, names)) > 0 {
		t.Errorf("second Sweep: %v, %v", again, err)
	}
}

// Without root, New skips the test, or fails it when CI=true.
func TestNewWithoutRoot(t *testing.T) {
	netlab.New(t) // root is needed to switch to another user
	// A copy of the test binary that user nobody can run.
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	bin := filepath.Join(dir, "netlab.test")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, ci := range []string{"", "true"} {
		cmd := exec.Command(bin, "-test.run=^TestTCPAndUDP$", "-test.v", "-test.count=1")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CI="+ci)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		switch {
		case ci == "" && (err != nil || !strings.Contains(string(out), "--- SKIP") || !strings.Contains(string(out), "need root")):
			t.Errorf("as nobody without CI: %v\n%s", err, out)
		case ci == "true" && (err == nil || !strings.Contains(string(out), "--- FAIL") || !strings.Contains(string(out), "CI=true: failing")):
			t.Errorf("as nobody with CI=true: %v\n%s", err, out)
		}
	}
}
