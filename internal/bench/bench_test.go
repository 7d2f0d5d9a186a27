package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStats(t *testing.T) {
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median odd = %v", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median even = %v", got)
	}
	if !math.IsNaN(median(nil)) || !math.IsNaN(percentile(nil, 95)) {
		t.Error("empty samples must give NaN")
	}
	xs := make([]float64, 100)
	for i := range xs {
		xs[i] = float64(100 - i)
	}
	if got := percentile(xs, 95); got != 95 {
		t.Errorf("p95 of 1..100 = %v", got)
	}
	if got := percentile([]float64{7}, 95); got != 7 {
		t.Errorf("p95 of one = %v", got)
	}
	if !math.IsNaN(ratio(1, 0)) || ratio(3, 2) != 1.5 {
		t.Error("ratio")
	}
	if got := order(3, 0); !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("order(3, 0) = %v", got)
	}
	if got := order(3, 1); !slices.Equal(got, []int{2, 1, 0}) {
		t.Errorf("order(3, 1) = %v", got)
	}
	if sizeName(16<<10) != "16 KiB" || sizeName(100) != "100 B" {
		t.Error("sizeName")
	}
}

func TestNumJSON(t *testing.T) {
	b, err := json.Marshal(Summary{Median: Num(math.NaN()), P95: 1.5, N: 2})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"median":null,"p95":1.5,"n":2}` {
		t.Fatalf("got %s", b)
	}
	var s Summary
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if !math.IsNaN(float64(s.Median)) || s.P95 != 1.5 {
		t.Fatalf("round trip gave %+v", s)
	}
}

// sampleReport is a report with every section filled in.
func sampleReport() *Report {
	sum := func(x float64) Summary { return Summary{Median: Num(x), P95: Num(x * 1.5), N: 5} }
	rep := &Report{Command: "rockudp bench", Started: time.Date(2026, 11, 30, 13, 50, 0, 0, time.UTC), Duration: 10 * time.Minute,
		Machine: Machine{CPU: "test CPU", CPUs: 2, GOMAXPROCS: 2, GoVersion: "go1.26.8", Kernel: "6.18", OS: "linux/amd64"}}
	for _, link := range []string{"loopback", "cable"} {
		l := LinkResult{Link: link, Description: "test"}
		for i, size := range blockSizes {
			f := float64(i + 1)
			l.Rows = append(l.Rows, BlockRow{Size: size, TCPThroughput: sum(1e6 * f), RockThroughput: sum(0.95e6 * f), ThroughputRatio: 0.95,
				TCPLatency: sum(1e-5 * f), RockLatency: sum(1.1e-5 * f), LatencyRatio: 1.1})
		}
		rep.Links = append(rep.Links, l)
	}
	rep.Setup = &SetupResult{Iterations: 5,
		Rows:      []SetupRow{{Name: "tcp", Time: sum(1e-4), Ratio: 1}, {Name: "rock cold", Time: sum(5e-4), Ratio: 5}, {Name: "rock cached", Time: sum(4e-4), Ratio: 4}},
		Breakdown: []SetupRow{{Name: "EDP probe", Time: sum(2e-4), Ratio: 2}, {Name: "control channel", Time: sum(2e-3), Ratio: 20, Background: true}}}
	rep.Failure = []FailureResult{{Policy: "default", Failure: "silent", Timeout: 3 * time.Second, BackoffMax: time.Second,
		Detection: sum(2.9), DetectionRatio: 0.97, Reconnect: sum(0.4), Outage: 4, Command: 0.01, Cause: "tcprocks: heartbeats missed"}}
	rep.Scale = []ScaleResult{{Rocks: 100, Reached: 100, SetupTime: 1}, {Rocks: 10000, Reached: 10000, SetupTime: 30,
		Server: SideCosts{RSS: 50 << 10, Heap: 40 << 10, Goroutines: 5, CPU: 1e-4, CPUTotal: 1},
		Client: SideCosts{RSS: 70 << 10, Heap: 40 << 10, Goroutines: 5, CPU: 1e-4, CPUTotal: 1}}}
	rep.Tunnel = &TunnelResult{Window: 32, Rows: []TunnelRow{
		{Path: "direct", Size: 64, Rate: sum(2e5), RTT: sum(1e-5), RateVsDirect: 1, RTTVsDirect: 1, RateVsUDPTunnel: 40, RTTVsUDPTunnel: 0.2},
		{Path: "rockudp", Size: 64, Rate: sum(1e5), RTT: sum(3e-5), RateVsDirect: 0.5, RTTVsDirect: 3, RateVsUDPTunnel: 20, RTTVsUDPTunnel: 0.6},
		{Path: "udptunnel", Size: 64, Rate: sum(5e3), RTT: sum(5e-5), RateVsDirect: 0.025, RTTVsDirect: 5, RateVsUDPTunnel: 1, RTTVsUDPTunnel: 1}}}
	rep.Notes = []string{"a note"}
	return rep
}

func TestMarkdownAndTargets(t *testing.T) {
	rep := sampleReport()
	var b bytes.Buffer
	if err := rep.WriteMarkdown(&b, "img"); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, w := range []string{"| 64 KiB |", "### cable (test)", "| rock cached | 400.0 |", "![Throughput and latency by block size](img/blocks.png)",
		"| default | silent | 3s |", "| 10000 | dialer | 70.0 |", "| rockudp | 64 B | 100000 |", "- a note", "| loopback: rock throughput ≥ 0.90× TCP from 1 KiB blocks | worst 0.95× | yes |",
		"| connect, cached ≤ 3× TCP (paper: about 18×) | 4.0× | **no** |", "listener 50.0 KiB, dialer 70.0 KiB | **no** |"} {
		if !strings.Contains(md, w) {
			t.Errorf("Markdown lacks %q:\n%s", w, md)
		}
	}
	met := map[string]bool{}
	for _, tg := range rep.Targets() {
		met[tg.Target] = tg.Met
	}
	for target, want := range map[string]bool{
		"cable: rock round trip ≤ 1.25× TCP":                                          true,
		"connect, cold ≤ 8× TCP":                                                      true,
		"default policy, silent: reconnection p95 ≤ 500 ms (paper: < 2 s)":            false, // p95 600 ms
		"default policy, silent: detection within heartbeat timeout + 10 % (3300 ms)": false, // p95 4.35 s
		"tunnel rate ≥ 1.5× udptunnel (64 B)":                                         true,
	} {
		got, ok := met[target]
		if !ok || got != want {
			t.Errorf("target %q: met %v (present %v), want %v", target, got, ok, want)
		}
	}
}

func TestPlots(t *testing.T) {
	dir := t.TempDir()
	names, err := sampleReport().WritePlots(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"blocks.png", "setup.png", "scale.png", "tunnel.png"}) {
		t.Fatalf("plots %v", names)
	}
	for _, n := range names {
		f, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		_, err = png.Decode(f)
		f.Close()
		if err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
}

// TestRunLoopback runs the loopback sections of a quick run for real; the numbers are logged.
func TestRunLoopback(t *testing.T) {
	var steps []Progress
	rep, err := Run(context.Background(), &Config{Quick: true, NoLab: true,
		Sections: []string{SectionBlocks, SectionSetup, SectionTunnel},
		Progress: func(p Progress) { steps = append(steps, p) }})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := rep.WriteMarkdown(&b, ""); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", b.String())
	if len(rep.Links) != 1 || len(rep.Links[0].Rows) != 3 {
		t.Fatalf("links %+v", rep.Links)
	}
	for _, row := range rep.Links[0].Rows {
		if !(row.TCPThroughput.Median > 0 && row.RockThroughput.Median > 0 && row.TCPLatency.Median > 0 && row.RockLatency.Median > 0) {
			t.Errorf("row without measurements: %+v", row)
		}
	}
	if rep.Setup == nil || len(rep.Setup.Rows) != 3 || rep.Setup.Rows[0].Ratio != 1 {
		t.Errorf("setup %+v", rep.Setup)
	}
	if rep.Tunnel == nil || len(rep.Tunnel.Rows) < 2 {
		t.Errorf("tunnel %+v", rep.Tunnel)
	}
	if len(steps) == 0 || steps[len(steps)-1].Section != SectionTunnel || steps[0].Sections != 3 {
		t.Errorf("progress %+v", steps)
	}
}

func TestRunErrors(t *testing.T) {
	if _, err := Run(context.Background(), &Config{Sections: []string{"nope"}}); err == nil || !strings.Contains(err.Error(), `unknown section "nope"`) {
		t.Errorf("unknown section: %v", err)
	}
	rep, err := Run(context.Background(), &Config{Sections: []string{SectionScale, SectionFailure}, NoLab: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Scale) != 0 || !strings.Contains(strings.Join(rep.Notes, " "), "Scale did not run") {
		t.Errorf("scale without Child: %+v", rep)
	}
	var out bytes.Buffer
	if err := RunChild(context.Background(), `{"job":"nope"}`, strings.NewReader(""), &out); err == nil || !strings.Contains(out.String(), `"ev":"error"`) {
		t.Errorf("bad job: %v, output %q", err, out.String())
	}
}
