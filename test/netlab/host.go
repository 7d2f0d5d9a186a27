//go:build linux

package netlab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Host is a network namespace of a [Lab]: an end host or a router.
type Host struct {
	lab    *Lab
	name   string // the name the test gave
	ns     string // the namespace's name
	router bool

	// Guarded by lab.mu.
	nextIf int      // the next host-end interface is "eth"+nextIf
	gw     [2]*Link // the link of the IPv4 and IPv6 default route, or nil
}

// Name returns the name of the host's network namespace, as "ip netns" knows it.
func (h *Host) Name() string { return h.ns }

// String returns the name the test gave the host.
func (h *Host) String() string { return h.name }

// Command returns a command that runs the program name inside the host's
// namespace ("ip netns exec"). Like [exec.CommandContext], ctx kills it.
// Processes still running when the lab is removed are killed then.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Run runs the program name inside the host's namespace and returns its
// combined output. The error includes the output.
func (h *Host) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := h.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("netlab: %s: %s %s: %w: %s", h.name, name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Do runs fn on an OS thread that is switched into the host's namespace, and
// switches the thread back afterwards. Sockets fn creates stay in the
// namespace for their whole life and may be used from any goroutine
// afterwards; goroutines fn starts do not run in the namespace. If the thread
// cannot be switched back, it is discarded.
func (h *Host) Do(fn func() error) error {
	target, err := unix.Open(filepath.Join("/run/netns", h.ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netlab: %s: %w", h.name, err)
	}
	defer unix.Close(target)

	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netlab: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netlab: entering %s: %w", h.ns, err)
	}
	defer func() {
		// A thread left in the wrong namespace stays locked, so the runtime
		// ends it with this goroutine instead of reusing it.
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}

// Listen is [net.Listen] inside the host's namespace.
func (h *Host) Listen(network, address string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// ListenPacket is [net.ListenPacket] inside the host's namespace.
func (h *Host) ListenPacket(network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := h.Do(func() (err error) {
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

// Dial is [net.Dialer.DialContext] inside the host's namespace. The address
// must hold a literal IP: name resolution could run on other threads, outside
// the namespace.
func (h *Host) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Addrs returns the host's global unicast addresses, as the kernel has them
// now (so an IPv6 address is missing while its link is down).
func (h *Host) Addrs() ([]netip.Prefix, error) {
	var addrs []netip.Prefix
	err := h.Do(func() error {
		ifaddrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range ifaddrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, _ := netip.AddrFromSlice(ipn.IP)
			ones, _ := ipn.Mask.Size()
			if ip = ip.Unmap(); ip.IsGlobalUnicast() {
				addrs = append(addrs, netip.PrefixFrom(ip, ones))
			}
		}
		return nil
	})
	return addrs, err
}

// setSysctls writes net.* sysctls (keys relative to /proc/sys/net) inside the
// namespace: /proc/sys/net belongs to the namespace of the opening thread.
func (h *Host) setSysctls(kv map[string]string) error {
	return h.Do(func() error {
		for k, v := range kv {
			if err := os.WriteFile(filepath.Join("/proc/sys/net", k), []byte(v), 0); err != nil {
				return fmt.Errorf("netlab: %s: %w", h.name, err)
			}
		}
		return nil
	})
}

// ip runs "ip -n NS args...".
func (h *Host) ip(args ...string) error {
	_, err := command("", "ip", append([]string{"-n", h.ns}, args...)...)
	return err
}
