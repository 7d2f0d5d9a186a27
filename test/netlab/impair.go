//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// impairments is what a link does to the traffic crossing it.
type impairments struct {
	delay    time.Duration // added in each direction
	loss     float64       // percent of packets dropped in each direction
	rate     uint64        // bits per second in each direction; 0 = unlimited
	blockUDP bool
	blockAll bool
}

// String describes the impairments, as "delay 50ms, loss 1%, UDP blocked".
func (imp impairments) String() string {
	var parts []string
	if imp.delay > 0 {
		parts = append(parts, "delay "+imp.delay.String())
	}
	if imp.loss > 0 {
		parts = append(parts, fmt.Sprintf("loss %g%%", imp.loss))
	}
	if imp.rate > 0 {
		parts = append(parts, fmt.Sprintf("rate %d bit/s", imp.rate))
	}
	if imp.blockUDP {
		parts = append(parts, "UDP blocked")
	}
	if imp.blockAll {
		parts = append(parts, "all blocked")
	}
	if len(parts) == 0 {
		return "no impairments"
	}
	return strings.Join(parts, ", ")
}

// SetDelay delays every packet crossing the link by d in each direction, so
// a round trip through the link takes 2d longer; 0 removes the delay. It
// uses tc netem if the kernel has it, and netlab's delay line otherwise
// (see the package documentation for how they differ).
func (lk *Link) SetDelay(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("netlab: negative delay %v", d)
	}
	return lk.change(func(imp *impairments) { imp.delay = d })
}

// SetLoss drops each packet crossing the link with probability pct percent
// (0 to 100, to two decimals), in each direction; 0 removes the loss.
func (lk *Link) SetLoss(pct float64) error {
	if !(pct >= 0 && pct <= 100) {
		return fmt.Errorf("netlab: loss %v%% is not between 0 and 100", pct)
	}
	return lk.change(func(imp *impairments) { imp.loss = pct })
}

// SetRate limits the traffic crossing the link to bitsPerSecond in each
// direction (a tbf qdisc on both ends; netem's rate when netem delays the
// link); 0 removes the limit.
func (lk *Link) SetRate(bitsPerSecond uint64) error {
	return lk.change(func(imp *impairments) { imp.rate = bitsPerSecond })
}

// BlockUDP silently drops (on) or lets through (off) all UDP crossing the
// link, as a firewall that blocks UDP does.
func (lk *Link) BlockUDP(on bool) error {
	return lk.change(func(imp *impairments) { imp.blockUDP = on })
}

// BlockAll silently drops (on) or lets through (off) all IP traffic crossing
// the link, to and from the router too: a failure neither end is told about,
// unlike Down.
func (lk *Link) BlockAll(on bool) error {
	return lk.change(func(imp *impairments) { imp.blockAll = on })
}

func (lk *Link) change(f func(*impairments)) error {
	lk.lab.mu.Lock()
	defer lk.lab.mu.Unlock()
	if err := lk.lab.alive(); err != nil {
		return err
	}
	f(&lk.imp)
	if err := lk.applyImpairments(); err != nil {
		return err
	}
	lk.lab.logf("%s: %v", lk.name(), lk.imp)
	return nil
}

// applyImpairments makes the kernel match lk.imp (lab.mu held).
func (lk *Link) applyImpairments() error {
	netem := lk.imp.delay > 0 && lk.lab.useNetem(lk.router.ns)
	err := lk.applyFilter()
	if e := lk.applyQdisc(netem); e != nil {
		err = errors.Join(err, e)
	}
	if lk.imp.delay > 0 && !netem {
		return errors.Join(err, lk.startDelayLine())
	}
	return errors.Join(err, lk.stopDelayLine())
}

// applyFilter replaces the link's nftables table on the router.
func (lk *Link) applyFilter() error {
	_, err := command(filterRuleset("link"+strconv.Itoa(lk.id), lk.routerIf(), lk.imp), "ip", "netns", "exec", lk.router.ns, "nft", "-f", "-")
	return err
}

// filterRuleset returns an nft script that replaces table inet table by one
// that drops what imp says on the traffic in and out of interface ifname.
// Dropping in prerouting before conntrack (priority -300) keeps dropped
// packets out of the connection table.
func filterRuleset(table, ifname string, imp impairments) string {
	var drops []string
	switch {
	case imp.blockAll:
		drops = []string{"drop"}
	default:
		if imp.blockUDP {
			drops = append(drops, "meta l4proto udp drop")
		}
		if n := int(math.Round(imp.loss * 100)); n > 0 {
			drops = append(drops, fmt.Sprintf("numgen random mod 10000 < %d drop", n))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "add table inet %s\ndelete table inet %s\n", table, table)
	if len(drops) == 0 {
		return b.String()
	}
	fmt.Fprintf(&b, "table inet %s {\n", table)
	for _, c := range []struct{ name, hook, prio, match string }{
		{"in", "prerouting", "-300", "iifname"},
		{"out", "postrouting", "300", "oifname"},
	} {
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook %s priority %s; policy accept;\n", c.name, c.hook, c.prio)
		for _, d := range drops {
			fmt.Fprintf(&b, "\t\t%s %q %s\n", c.match, ifname, d)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// applyQdisc installs (or removes) the root qdisc on both ends.
func (lk *Link) applyQdisc(netem bool) error {
	args := qdiscArgs(lk.imp, netem)
	if args == nil && !lk.qdisc {
		return nil
	}
	var errs []error
	for _, end := range []struct{ ns, dev string }{{lk.host.ns, lk.hostIf}, {lk.router.ns, lk.routerIf()}} {
		var err error
		if args == nil {
			_, err = command("", "tc", "-n", end.ns, "qdisc", "del", "dev", end.dev, "root")
		} else {
			_, err = command("", "tc", append([]string{"-n", end.ns, "qdisc", "replace", "dev", end.dev, "root"}, args...)...)
		}
		errs = append(errs, err)
	}
	lk.qdisc = args != nil
	return errors.Join(errs...)
}

// qdiscArgs returns the root qdisc for imp ("tc qdisc replace ... root
// ARGS"), or nil for none: netem for delay when the kernel has it (with its
// own rate limit), tbf for a rate limit alone. The tbf bucket holds 10 ms of
// traffic, at least 4 KiB, and its queue 100 ms.
func qdiscArgs(imp impairments, netem bool) []string {
	rate := strconv.FormatUint(imp.rate, 10) + "bit"
	switch {
	case netem && imp.delay > 0:
		args := []string{"netem", "delay", strconv.FormatInt(imp.delay.Microseconds(), 10) + "us", "limit", "4096"}
		if imp.rate > 0 {
			args = append(args, "rate", rate)
		}
		return args
	case imp.rate > 0:
		burst := max(imp.rate/8/100, 4096)
		return []string{"tbf", "rate", rate, "burst", strconv.FormatUint(burst, 10), "latency", "100ms"}
	}
	return nil
}
