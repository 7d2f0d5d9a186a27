//go:build linux

// Package cli tests the rockudp command as users run it: the real binary, real signals,
// real OpenSSH and curl, in the network lab (package netlab) where a test needs hosts
// that move.
package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rockudp/rockudp/internal/testwait"
	"github.com/rockudp/rockudp/test/netlab"
	"go.uber.org/goleak"
)

// rockudpBin is the rockudp binary TestMain builds.
var rockudpBin string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

// buildAndRun builds the binary into a directory of its own, runs the tests and removes it.
func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "rockudp-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755) // lab processes may run as other users (sshd's children)
	rockudpBin = filepath.Join(dir, "rockudp")
	build := exec.Command("go", "build", "-o", rockudpBin, "github.com/rockudp/rockudp/cmd/rockudp")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building rockudp:", err)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

// inCI reports whether CI=true: then a test that lacks what it needs fails.
func inCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}

// need fails (with CI=true) or skips the test unless every program is installed.
func need(t *testing.T, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			if inCI() {
				t.Fatalf("%s is not installed (test/run installs it)", p)
			}
			t.Skipf("%s is not installed", p)
		}
	}
}

// daemon is a rockudp (or other) process a test runs: its combined output is kept.
type daemon struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	out  lockedBuffer
	done chan struct{}
	err  error // of Wait, once done is closed
}

// command returns a command that runs program in host's namespace (host nil: here),
// with XDG_RUNTIME_DIR set to runtimeDir when it is not "", so that "rockudp status"
// sees only the test's processes.
func command(host *netlab.Host, runtimeDir, program string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if host != nil {
		cmd = host.Command(context.Background(), program, args...)
	} else {
		cmd = exec.Command(program, args...)
	}
	if runtimeDir != "" {
		cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+runtimeDir)
	}
	return cmd
}

// start runs cmd (see command). The process is stopped with SIGTERM when the test
// ends, and killed if it does not exit within 30 s.
func start(t testing.TB, name string, cmd *exec.Cmd) *daemon {
	t.Helper()
	d := &daemon{t: t, name: name, cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &d.out, &d.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		if err := d.stop(); err != nil && !t.Failed() {
			t.Errorf("%s: %v\n%s", name, err, d.out.String())
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, d.out.String())
		}
	})
	return d
}

// rockudp runs the rockudp binary in host (nil: here) with status sockets in
// runtimeDir (see command and start).
func rockudp(t testing.TB, host *netlab.Host, runtimeDir, name string, args ...string) *daemon {
	t.Helper()
	return start(t, name, command(host, runtimeDir, rockudpBin, args...))
}

// stop sends SIGTERM and waits for the exit (killing after 30 s); it returns the exit
// error. It may be called more than once.
func (d *daemon) stop() error {
	select {
	case <-d.done:
		return d.err
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return d.err
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("did not exit within 30 s of SIGTERM: killed")
	}
}

// waitFor waits until the output contains s.
func (d *daemon) waitFor(s string, timeout time.Duration) {
	d.t.Helper()
	testwait.Within(d.t, timeout, fmt.Sprintf("%s to print %q", d.name, s), func() error {
		if strings.Contains(d.out.String(), s) {
			return nil
		}
		select {
		case <-d.done:
			d.t.Fatalf("%s exited (%v) before printing %q:\n%s", d.name, d.err, s, d.out.String())
		default:
		}
		return fmt.Errorf("it printed:\n%s", d.out.String())
	})
}

// logEvent is a line of rockudp's JSON log (--log-format json).
type logEvent struct {
	Time     time.Time     `json:"time"`
	Msg      string        `json:"msg"`
	Rock     string        `json:"rock"`
	Downtime time.Duration `json:"downtime"` // slog writes durations in nanoseconds
	Replayed int64         `json:"replayed_bytes"`
	Cause    string        `json:"cause"`
	Remote   logAddr       `json:"remote"` // the peer's address after a resumption
	Target   string        `json:"target"` // the address a reconnection attempt tries
}

// logAddr is a *net.TCPAddr as slog's JSON handler writes it.
type logAddr struct {
	IP   string `json:"IP"`
	Port int    `json:"Port"`
}

func (a logAddr) String() string { return net.JoinHostPort(a.IP, strconv.Itoa(a.Port)) }

// events returns the JSON log lines in out whose message is msg.
func events(out, msg string) []logEvent {
	var got []logEvent
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var e logEvent
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Msg == msg {
			got = append(got, e)
		}
	}
	return got
}

// lockedBuffer is a bytes.Buffer for a process writing while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
