//go:build linux

package netlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// nsPrefix starts the name of every namespace netlab creates: nsPrefix+RUN+"-"+HOST.
	nsPrefix = "netlab-"
	// lockDir holds one RUN.lock per live lab, flocked by its owner (see Sweep).
	lockDir = "/run/netlab"
	// cmdTimeout bounds every ip, nft and tc command the lab runs.
	cmdTimeout = 30 * time.Second
)

// Lab is one test's network: its namespaces, links and NATs. Create it with
// [New]; everything it creates is removed when the test ends. Its methods are
// safe for concurrent use; changes to the topology are applied one at a time.
type Lab struct {
	tb    testing.TB
	start time.Time // for the times in the log
	run   string    // random ID in every namespace name of this lab
	lock  *os.File  // flocked while the lab lives: tells Sweep the run is not stale

	done      chan struct{} // closed when teardown starts; stops the signal watcher
	watcher   sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	netemOnce sync.Once
	netem     bool // tc netem works on this kernel

	mu    sync.Mutex // guards the fields below and serialises topology changes
	hosts map[string]*Host
	order []*Host // creation order, for teardown
	links []*Link
}

// New creates an empty lab for tb and registers its removal with tb.Cleanup.
//
// Without root, iproute2, nftables or network namespace support, New skips the
// test with the reason, unless the environment variable CI is true: then it
// fails the test, so that CI never passes by skipping. New first removes what
// killed earlier runs left behind (see [Sweep]).
func New(tb testing.TB) *Lab {
	tb.Helper()
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return newLab(tb, ci, requirements(os.Geteuid(), exec.LookPath))
}

func newLab(tb testing.TB, ci bool, problem string) *Lab {
	tb.Helper()
	gate(tb, ci, problem)
	if removed, err := Sweep(); err != nil {
		tb.Logf("netlab: removing stale labs: %v", err)
	} else if len(removed) > 0 {
		tb.Logf("netlab: removed stale namespaces of killed runs: %s", strings.Join(removed, " "))
	}
	lock, run, err := takeRunLock()
	if err != nil {
		tb.Fatalf("%v", err)
	}
	l := &Lab{tb: tb, start: time.Now(), run: run, lock: lock, done: make(chan struct{}), hosts: make(map[string]*Host)}
	tb.Cleanup(func() {
		if err := l.teardown(); err != nil {
			tb.Errorf("%v", err)
		}
		l.watcher.Wait()
	})
	l.watchSignals()
	if err := probeNetns(nsPrefix + run + "-probe"); err != nil {
		gate(tb, ci, "cannot create network namespaces: "+err.Error())
	}
	return l
}

// requirements says what this machine lacks to run a lab, or "" if nothing.
func requirements(euid int, lookPath func(string) (string, error)) string {
	if euid != 0 {
		return "network namespaces need root (euid is " + strconv.Itoa(euid) + ")"
	}
	for _, tool := range []string{"ip", "nft", "tc"} {
		if _, err := lookPath(tool); err != nil {
			return tool + " not found (install iproute2 and nftables)"
		}
	}
	return ""
}

// gate skips tb when problem is not empty, or fails it in CI: a CI run must
// never pass by skipping its network tests.
func gate(tb testing.TB, ci bool, problem string) {
	tb.Helper()
	if problem == "" {
		return
	}
	if ci {
		tb.Fatalf("netlab: %s (CI=true: failing instead of skipping)", problem)
	}
	tb.Skipf("netlab: %s", problem)
}

// probeNetns creates and deletes a namespace to learn whether we may.
func probeNetns(name string) error {
	if _, err := command("", "ip", "netns", "add", name); err != nil {
		return err
	}
	_, err := command("", "ip", "netns", "del", name)
	return err
}

// takeRunLock creates and flocks a fresh lock file, whose name is the run ID.
func takeRunLock() (*os.File, string, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, "", fmt.Errorf("netlab: %w", err)
	}
	for range 10 {
		run := strings.ToLower(rand.Text()[:6])
		f, err := os.OpenFile(filepath.Join(lockDir, run+".lock"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("netlab: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			return nil, "", fmt.Errorf("netlab: locking %s: %w", f.Name(), err)
		}
		return f, run, nil
	}
	return nil, "", errors.New("netlab: no free run ID")
}

// watchSignals tears the lab down on SIGINT or SIGTERM and then lets the
// signal end the process, as it would have without the lab.
func (l *Lab) watchSignals() {
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	l.watcher.Add(1)
	go func() {
		defer l.watcher.Done()
		select {
		case sig := <-sigc:
			l.teardown()
			signal.Stop(sigc)
			// With no other listener left, the runtime's default action ends
			// the process; another lab's watcher passes the signal on in turn.
			syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		case <-l.done:
			signal.Stop(sigc)
		}
	}()
}

// teardown removes everything the lab created, once; later calls return the
// first call's error.
func (l *Lab) teardown() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.mu.Lock()
		defer l.mu.Unlock()
		var errs []error
		for _, lk := range l.links {
			if lk.line != nil {
				errs = append(errs, lk.line.Close())
				lk.line = nil
			}
		}
		for i := len(l.order) - 1; i >= 0; i-- {
			errs = append(errs, removeNetns(l.order[i].ns))
		}
		errs = append(errs, os.Remove(l.lock.Name()), l.lock.Close())
		l.closeErr = errors.Join(errs...)
	})
	return l.closeErr
}

// removeNetns kills the processes in namespace ns and deletes it. The veth
// pairs inside go with it once the last socket in the namespace is closed.
func removeNetns(ns string) error {
	out, err := command("", "ip", "netns", "pids", ns)
	if err != nil {
		return err
	}
	self := os.Getpid()
	for _, f := range strings.Fields(out) {
		// Our own process shows up while one of its threads runs Host.Do here.
		if pid, err := strconv.Atoi(f); err == nil && pid != self {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
	_, err = command("", "ip", "netns", "del", ns)
	return err
}

// command runs a tool (ip, nft, tc) with stdin and returns its standard output.
func command(stdin, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("netlab: %s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

var hostName = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,32}$`)

// Host creates a host: a network namespace with only its loopback interface
// up. Connect it to a router with [Lab.Connect]. Names are 1 to 32 letters,
// digits, '-' or '_', unique in the lab. Host fails the test on error.
func (l *Lab) Host(name string) *Host {
	l.tb.Helper()
	h, err := l.addHost(name, false)
	if err != nil {
		l.tb.Fatalf("%v", err)
	}
	return h
}

// Router creates a router: a host that forwards IPv4 and IPv6 between its
// links. Router fails the test on error.
func (l *Lab) Router(name string) *Host {
	l.tb.Helper()
	h, err := l.addHost(name, true)
	if err != nil {
		l.tb.Fatalf("%v", err)
	}
	return h
}

func (l *Lab) addHost(name string, router bool) (*Host, error) {
	if !hostName.MatchString(name) {
		return nil, fmt.Errorf("netlab: bad host name %q", name)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.alive(); err != nil {
		return nil, err
	}
	if _, dup := l.hosts[name]; dup {
		return nil, fmt.Errorf("netlab: host %q exists", name)
	}
	h := &Host{lab: l, name: name, ns: nsPrefix + l.run + "-" + name, router: router}
	if _, err := command("", "ip", "netns", "add", h.ns); err != nil {
		return nil, err
	}
	l.hosts[name] = h
	l.order = append(l.order, h)
	if _, err := command("", "ip", "-n", h.ns, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	// No duplicate address detection (addresses work at once), no router
	// advertisements, no reverse-path filter (the delay line reinjects packets).
	sysctls := map[string]string{
		"ipv6/conf/all/accept_dad":     "0",
		"ipv6/conf/default/accept_dad": "0",
		"ipv6/conf/all/accept_ra":      "0",
		"ipv6/conf/default/accept_ra":  "0",
		"ipv4/conf/all/rp_filter":      "0",
		"ipv4/conf/default/rp_filter":  "0",
	}
	if router {
		sysctls["ipv4/ip_forward"] = "1"
		sysctls["ipv6/conf/all/forwarding"] = "1"
		sysctls["ipv6/conf/default/forwarding"] = "1"
		sysctls["ipv4/conf/all/send_redirects"] = "0"
		sysctls["ipv4/conf/default/send_redirects"] = "0"
	}
	if err := h.setSysctls(sysctls); err != nil {
		return nil, err
	}
	return h, nil
}

// logf logs a change to the network with the time since the lab began, so
// that a failing scenario's log tells what happened when. With l.mu held
// (hence before teardown), so never after the test has ended.
func (l *Lab) logf(format string, args ...any) {
	l.tb.Logf("netlab +%.3fs: %s", time.Since(l.start).Seconds(), fmt.Sprintf(format, args...))
}

// alive reports an error once teardown has started (l.mu held).
func (l *Lab) alive() error {
	select {
	case <-l.done:
		return errors.New("netlab: lab is closed")
	default:
		return nil
	}
}

// useNetem reports whether tc netem works, testing it once in namespace ns.
// NETLAB_NETEM=off makes it false, to exercise the fallback delay line.
func (l *Lab) useNetem(ns string) bool {
	l.netemOnce.Do(func() {
		if os.Getenv("NETLAB_NETEM") == "off" {
			return
		}
		_, err := command("", "tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms")
		if err == nil {
			l.netem = true
			command("", "tc", "-n", ns, "qdisc", "del", "dev", "lo", "root")
		}
	})
	return l.netem
}
