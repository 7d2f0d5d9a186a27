//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The fallback delay line of a link with id N lives in the router's
// namespace: a TUN device "dN", routing table tableBase+N and policy rules
// with preferences from rulePref(N). Packets that arrive on the link's
// router end, or are about to be forwarded to the host's subnets, are routed
// into dN; the line reads them, holds them, and writes them back into dN,
// where they arrive as new packets and are routed by the main table. Rules:
//
//	pref P+0  iif dN lookup main     packets coming back from the line
//	pref P+1  iif dN unreachable     ... never loop into it again
//	pref P+2  iif lo lookup main     the router's own traffic is not delayed
//	pref P+3  iif vN lookup T        from the host
//	pref P+4  to SUBNET lookup T     to the host (one per address family)
//	table T:  default dev dN
const (
	tableBase     = 1000
	maxQueued     = 4096  // packets held at once; more are dropped
	maxPacketSize = 65536 // a TUN device never hands over more
)

func rulePref(id int) int { return 20000 + 8*id }

func (lk *Link) tunName() string { return "d" + strconv.Itoa(lk.id) }

// startDelayLine starts the link's delay line, or updates its delay
// (lab.mu held).
func (lk *Link) startDelayLine() error {
	if lk.line != nil {
		lk.line.setDelay(lk.imp.delay)
		return nil
	}
	name := lk.tunName()
	var f *os.File
	err := lk.router.Do(func() (err error) {
		f, err = openTUN(name)
		return err
	})
	if err != nil {
		return err
	}
	lk.line = newDelayLine(f, lk.imp.delay)
	// The router end must forward the packets coming back from the line,
	// even when it is a plain host.
	err = lk.router.setSysctls(map[string]string{
		"ipv4/conf/" + name + "/rp_filter": "0",
		"ipv4/ip_forward":                  "1",
		"ipv6/conf/all/forwarding":         "1",
	})
	if err == nil {
		err = lk.router.ip("link", "set", name, "up", "txqueuelen", "1000")
	}
	for fam := range 2 {
		if err == nil {
			err = lk.router.ip(familyFlag(fam), "route", "replace", "default", "dev", name, "table", strconv.Itoa(tableBase+lk.id))
		}
	}
	if err == nil {
		err = lk.delayRules()
	}
	if err != nil {
		return errors.Join(err, lk.stopDelayLine())
	}
	return nil
}

// delayRules replaces the policy rules that steer the link's traffic through
// its delay line (lab.mu held).
func (lk *Link) delayRules() error {
	lk.deleteDelayRules()
	p, tun, table := rulePref(lk.id), lk.tunName(), strconv.Itoa(tableBase+lk.id)
	for fam := range 2 {
		rules := [][]string{
			{"pref", strconv.Itoa(p), "iif", tun, "lookup", "main"},
			{"pref", strconv.Itoa(p + 1), "iif", tun, "unreachable"},
			{"pref", strconv.Itoa(p + 2), "iif", "lo", "lookup", "main"},
			{"pref", strconv.Itoa(p + 3), "iif", lk.routerIf(), "lookup", table},
		}
		for _, gw := range lk.gws {
			if family(gw.Addr()) == fam {
				rules = append(rules, []string{"pref", strconv.Itoa(p + 4), "to", gw.Masked().String(), "lookup", table})
			}
		}
		for _, r := range rules {
			if err := lk.router.ip(append([]string{familyFlag(fam), "rule", "add"}, r...)...); err != nil {
				return err
			}
		}
	}
	return nil
}

// deleteDelayRules removes the link's policy rules, if any.
func (lk *Link) deleteDelayRules() {
	var stdin []byte
	for pref := rulePref(lk.id); pref <= rulePref(lk.id)+4; pref++ {
		stdin = fmt.Appendf(stdin, "rule del pref %d\n", pref)
	}
	for fam := range 2 {
		// Deleting a rule that is not there fails; -force goes on with the
		// next line, and the error only says that some were missing.
		command(string(stdin), "ip", familyFlag(fam), "-force", "-n", lk.router.ns, "-batch", "-")
	}
}

// stopDelayLine removes the link's delay line, if it runs (lab.mu held).
// Closing the TUN device removes it and the routes through it.
func (lk *Link) stopDelayLine() error {
	if lk.line == nil {
		return nil
	}
	lk.deleteDelayRules()
	err := lk.line.Close()
	lk.line = nil
	return err
}

// openTUN creates a TUN device (IP packets, no packet information header)
// in the calling thread's namespace. The device lives until the file is
// closed. The file is non-blocking, so Close interrupts a Read.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("netlab: delay line needs TUN: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlab: creating TUN %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// delayLine holds every packet read from a TUN device for a delay, then
// writes it back, in order.
type delayLine struct {
	f     *os.File
	delay atomic.Int64 // time.Duration for packets read from now on
	queue chan packet
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

type packet struct {
	due time.Time
	b   []byte
}

func newDelayLine(f *os.File, d time.Duration) *delayLine {
	dl := &delayLine{f: f, queue: make(chan packet, maxQueued), done: make(chan struct{})}
	dl.delay.Store(int64(d))
	dl.wg.Add(2)
	go dl.read()
	go dl.write()
	return dl
}

func (dl *delayLine) setDelay(d time.Duration) { dl.delay.Store(int64(d)) }

// read queues each packet with the time it is due. A packet is never due
// before the one ahead of it, so a shorter delay does not reorder packets.
func (dl *delayLine) read() {
	defer dl.wg.Done()
	buf := make([]byte, maxPacketSize)
	var last time.Time
	for {
		n, err := dl.f.Read(buf)
		if err != nil {
			return // closed
		}
		due := time.Now().Add(time.Duration(dl.delay.Load()))
		if due.Before(last) {
			due = last
		}
		last = due
		select {
		case dl.queue <- packet{due: due, b: append([]byte(nil), buf[:n]...)}:
		default: // full: drop, like a full qdisc
		}
	}
}

// write sends each packet back into the device when it is due.
func (dl *delayLine) write() {
	defer dl.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		var p packet
		select {
		case p = <-dl.queue:
		case <-dl.done:
			return
		}
		if wait := time.Until(p.due); wait > 0 {
			t.Reset(wait)
			select {
			case <-t.C:
			case <-dl.done:
				return
			}
		}
		// An error means a packet the kernel refuses, or a closed device.
		dl.f.Write(p.b)
	}
}

// Close stops the line, drops the packets it holds and removes the device.
func (dl *delayLine) Close() error {
	var err error
	dl.once.Do(func() {
		close(dl.done)
		err = dl.f.Close()
		dl.wg.Wait()
	})
	return err
}
