//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeTB records Skipf and Fatalf instead of acting on them, and ends the
// goroutine as they do.
type fakeTB struct {
	testing.TB
	skipped, failed string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// runTB runs f with a fakeTB on its own goroutine, as the testing package
// would, and returns what it recorded.
func runTB(t *testing.T, f func(tb testing.TB)) *fakeTB {
	fake := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(fake)
	}()
	<-done
	return fake
}

func TestGate(t *testing.T) {
	for _, tc := range []struct {
		ci                   bool
		problem              string
		wantSkip, wantFailed bool
	}{
		{ci: false, problem: "", wantSkip: false, wantFailed: false},
		{ci: true, problem: "", wantSkip: false, wantFailed: false},
		{ci: false, problem: "no root", wantSkip: true, wantFailed: false},
		{ci: true, problem: "no root", wantSkip: false, wantFailed: true},
	} {
		got := runTB(t, func(tb testing.TB) { gate(tb, tc.ci, tc.problem) })
		if (got.skipped != "") != tc.wantSkip || (got.failed != "") != tc.wantFailed {
			t.Errorf("gate(ci=%v, %q): skipped %q, failed %q", tc.ci, tc.problem, got.skipped, got.failed)
		}
		if msg := got.skipped + got.failed; !strings.Contains(msg, tc.problem) {
			t.Errorf("gate(ci=%v, %q): message %q does not give the reason", tc.ci, tc.problem, msg)
		}
	}
}

// In CI a lab that cannot run fails the test before touching anything.
func TestNewLabFailsInCI(t *testing.T) {
	missing := func(tool string) (string, error) {
		if tool == "nft" {
			return "", errors.New("not found")
		}
		return "/usr/sbin/" + tool, nil
	}
	for _, problem := range []string{requirements(1000, missing), requirements(0, missing)} {
		got := runTB(t, func(tb testing.TB) { newLab(tb, true, problem) })
		if got.failed == "" || got.skipped != "" || !strings.Contains(got.failed, "CI=true") {
			t.Errorf("newLab in CI with %q: failed %q, skipped %q", problem, got.failed, got.skipped)
		}
		got = runTB(t, func(tb testing.TB) { newLab(tb, false, problem) })
		if got.skipped == "" || got.failed != "" {
			t.Errorf("newLab outside CI with %q: failed %q, skipped %q", problem, got.failed, got.skipped)
		}
	}
}

func TestRequirements(t *testing.T) {
	all := func(tool string) (string, error) { return "/usr/sbin/" + tool, nil }
	if got := requirements(1000, all); !strings.Contains(got, "root") {
		t.Errorf("requirements(euid 1000) = %q, want a word about root", got)
	}
	for _, tool := range []string{"ip", "nft", "tc"} {
		lacking := func(name string) (string, error) {
			if name == tool {
				return "", errors.New("not found")
			}
			return all(name)
		}
		if got := requirements(0, lacking); !strings.Contains(got, tool+" not found") {
			t.Errorf("requirements without %s = %q", tool, got)
		}
	}
	if got := requirements(0, all); got != "" {
		t.Errorf("requirements(root, all tools) = %q, want none", got)
	}
}

func TestPlanSubnet(t *testing.T) {
	for _, tc := range []struct{ subnet, host, router, err string }{
		{subnet: "192.0.2.0/24", host: "192.0.2.2/24", router: "192.0.2.1/24"},
		{subnet: "192.0.2.10/24", host: "192.0.2.10/24", router: "192.0.2.1/24"},
		{subnet: "198.51.100.64/30", host: "198.51.100.66/30", router: "198.51.100.65/30"},
		{subnet: "203.0.113.128/25", host: "203.0.113.130/25", router: "203.0.113.129/25"},
		{subnet: "2001:db8:1::/64", host: "2001:db8:1::2/64", router: "2001:db8:1::1/64"},
		{subnet: "2001:db8:1::99/64", host: "2001:db8:1::99/64", router: "2001:db8:1::1/64"},
		{subnet: "10.0.0.0/8", err: "documentation ranges"},
		{subnet: "192.0.0.0/16", err: "documentation ranges"},
		{subnet: "2001:db9::/64", err: "documentation ranges"},
		{subnet: "fd00::/64", err: "documentation ranges"},
		{subnet: "192.0.2.0/31", err: "too small"},
		{subnet: "2001:db8::/127", err: "too small"},
		{subnet: "192.0.2.1/24", err: "router's"},
		{subnet: "192.0.2.255/24", err: "broadcast"},
	} {
		host, router, err := planSubnet(netip.MustParsePrefix(tc.subnet))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("planSubnet(%s): error %v, want one about %q", tc.subnet, err, tc.err)
			}
			continue
		}
		if err != nil || host.String() != tc.host || router.String() != tc.router {
			t.Errorf("planSubnet(%s) = %v, %v, %v; want %s, %s", tc.subnet, host, router, err, tc.host, tc.router)
		}
	}
}

func TestFilterRuleset(t *testing.T) {
	empty := filterRuleset("link3", "v3", impairments{})
	if empty != "add table inet link3\ndelete table inet link3\n" {
		t.Errorf("no impairments: %q", empty)
	}
	rs := filterRuleset("link3", "v3", impairments{blockUDP: true, loss: 12.345})
	for _, want := range []string{
		"type filter hook prerouting priority -300;",
		"type filter hook postrouting priority 300;",
		`iifname "v3" meta l4proto udp drop`,
		`oifname "v3" meta l4proto udp drop`,
		`iifname "v3" numgen random mod 10000 < 1235 drop`,
		`oifname "v3" numgen random mod 10000 < 1235 drop`,
	} {
		if !strings.Contains(rs, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, rs)
		}
	}
	all := filterRuleset("link3", "v3", impairments{blockAll: true, blockUDP: true, loss: 50})
	if strings.Contains(all, "udp") || strings.Contains(all, "numgen") || strings.Count(all, `"v3" drop`) != 2 {
		t.Errorf("blockAll should drop everything with one rule per direction:\n%s", all)
	}
}

func TestQdiscArgs(t *testing.T) {
	for _, tc := range []struct {
		imp   impairments
		netem bool
		want  string
	}{
		{impairments{}, true, ""},
		{impairments{loss: 5, blockUDP: true}, false, ""},
		{impairments{delay: 50 * time.Millisecond}, false, ""}, // the delay line's job
		{impairments{delay: 50 * time.Millisecond}, true, "netem delay 50000us limit 4096"},
		{impairments{delay: time.Millisecond, rate: 1e6}, true, "netem delay 1000us limit 4096 rate 1000000bit"},
		{impairments{delay: time.Millisecond, rate: 1e6}, false, "tbf rate 1000000bit burst 4096 latency 100ms"},
		{impairments{rate: 1e9}, true, "tbf rate 1000000000bit burst 1250000 latency 100ms"},
	} {
		if got := strings.Join(qdiscArgs(tc.imp, tc.netem), " "); got != tc.want {
			t.Errorf("qdiscArgs(%+v, netem=%v) = %q, want %q", tc.imp, tc.netem, got, tc.want)
		}
	}
}

func TestReport(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("NETLAB_REPORT_DIR", dir)
	if ReportDir() != dir {
		t.Fatalf("ReportDir() = %q, want %q", ReportDir(), dir)
	}
	t.Run("scenarios", func(t *testing.T) {
		r := NewReport(t, "move/v4 | x")
		r.Add(Row{Scenario: "address change", Detection: 1500 * time.Microsecond, Recovery: 2 * time.Second,
			BytesReplayed: 4096, BytesVerified: 1 << 20, Notes: "a|b"})
		r.Add(Row{Scenario: "link down"})
	})
	t.Run("empty", func(t *testing.T) { NewReport(t, "empty") })

	md, err := os.ReadFile(filepath.Join(dir, "move_v4_x.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| scenario | detection (ms) | recovery (ms) | bytes replayed | bytes verified | notes |",
		"| address change | 1.5 | 2000.0 | 4096 | 1048576 | a\\|b |",
		"| link down |  |  |  |  |  |",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md)
		}
	}
	js, err := os.ReadFile(filepath.Join(dir, "move_v4_x.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"detection_ms": 1.5`, `"recovery_ms": 2000`, `"bytes_verified": 1048576`, `"notes": "a|b"`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("JSON lacks %q:\n%s", want, js)
		}
	}
	files, _ := os.ReadDir(dir)
	var names []string
	for _, f := range files {
		names = append(names, f.Name())
	}
	if want := []string{"move_v4_x.json", "move_v4_x.md"}; !slices.Equal(names, want) {
		t.Errorf("report directory holds %v, want %v (no file for an empty report, no temporary files)", names, want)
	}
}

// The netem path cannot run where the kernel lacks netem, but tc parses its
// options before asking the kernel: whatever it says must not be a parse
// error.
func TestNetemArgsParse(t *testing.T) {
	l := New(t)
	h := l.Host("h")
	args := qdiscArgs(impairments{delay: 25 * time.Millisecond, rate: 5e6}, true)
	_, err := command("", "tc", append([]string{"-n", h.ns, "qdisc", "replace", "dev", "lo", "root"}, args...)...)
	if err != nil && !strings.Contains(err.Error(), "qdisc kind is unknown") {
		t.Errorf("tc %v: %v", args, err)
	}
	t.Logf("netem on this kernel: %v (tc: %v)", l.useNetem(h.ns), err)
}
