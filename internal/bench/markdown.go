package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// JSON writes the report as indented JSON.
func (rep *Report) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// WriteMarkdown writes the report as Markdown: the machine and command, one table per
// measurement with ratio columns against the row's baseline, the targets met or missed,
// and the notes. imgDir, if not empty, is the directory (relative to the Markdown file) of the
// plots WritePlots made; they are linked under their sections.
func (rep *Report) WriteMarkdown(w io.Writer, imgDir string) error {
	b := &strings.Builder{}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	m := rep.Machine
	mode := "full"
	if rep.Quick {
		mode = "quick (reduced set; numbers not meant to be judged)"
	}
	p("Measured %s UTC in %s; %s run.\n\n", rep.Started.Format("2006-01-02 15:04"), rep.Duration.Round(time.Second), mode)
	p("| | |\n|---|---|\n")
	p("| command | `%s` |\n", rep.Command)
	p("| CPU | %s (%d CPUs, GOMAXPROCS %d) |\n", or(m.CPU, "unknown"), m.CPUs, m.GOMAXPROCS)
	p("| system | %s, kernel %s, root: %v |\n", m.OS, or(m.Kernel, "unknown"), m.Root)
	p("| Go | %s |\n\n", m.GoVersion)
	img := func(name, alt string) {
		if imgDir != "" {
			p("![%s](%s/%s)\n\n", alt, strings.TrimSuffix(imgDir, "/"), name)
		}
	}

	if len(rep.Links) > 0 {
		p("## Throughput and latency by block size (paper: Figure 6)\n\n")
		p("A block is the buffer passed to one write. Throughput: the sender writes blocks for a fixed time " +
			"(on shaped links also at most what the link carries in that time) and the receiver's rate from the " +
			"first write to the last byte read counts; median of the repetitions. Latency: one block sent and " +
			"echoed back, one at a time; median of the repetitions' medians, p95 over every round trip. " +
			"Ratios are rock / plain TCP.\n\n")
		for _, l := range rep.Links {
			p("### %s (%s)\n\n", l.Link, l.Description)
			p("| block | TCP Mb/s | rock Mb/s | rock/TCP | TCP RTT µs | rock RTT µs | rock/TCP | TCP p95 µs | rock p95 µs |\n")
			p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
			for _, row := range l.Rows {
				p("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", sizeName(row.Size),
					f(mbps(row.TCPThroughput.Median), 1), f(mbps(row.RockThroughput.Median), 1), f(row.ThroughputRatio, 2),
					f(us(row.TCPLatency.Median), 1), f(us(row.RockLatency.Median), 1), f(row.LatencyRatio, 2),
					f(us(row.TCPLatency.P95), 1), f(us(row.RockLatency.P95), 1))
			}
			p("\n")
		}
		img("blocks.png", "Throughput and latency by block size")
	}

	if s := rep.Setup; s != nil {
		p("## Connection set-up (paper: Table 1)\n\n")
		p("Time until the application holds a usable connection, on loopback, %d connections of each kind, "+
			"alternating kinds; the process is idle before each one. Ratio against plain TCP.\n\n", s.Iterations)
		p("| connection | median µs | p95 µs | ×TCP | what is timed |\n|---|---:|---:|---:|---|\n")
		for _, row := range s.Rows {
			p("| %s | %s | %s | %s | %s |\n", row.Name, f(us(row.Time.Median), 1), f(us(row.Time.P95), 1), f(row.Ratio, 1), row.What)
		}
		p("\nWhere a rock's set-up time goes (each part measured alone, in the same run):\n\n")
		p("| part | median µs | p95 µs | ×TCP | in Dial? | what is timed |\n|---|---:|---:|---:|---|---|\n")
		for _, row := range s.Breakdown {
			in := "yes"
			if row.Background {
				in = "no: after Dial returns"
			}
			if row.Name == "EDP probe" {
				in = "cold only"
			}
			p("| %s | %s | %s | %s | %s | %s |\n", row.Name, f(us(row.Time.Median), 1), f(us(row.Time.P95), 1), f(row.Ratio, 1), in, row.What)
		}
		p("\n")
		img("setup.png", "Connection set-up times")
	}

	if len(rep.Failure) > 0 {
		p("## Failure detection and reconnection (paper: section 9.3)\n\n")
		p("In the lab, the client's link fails while the rock is idle, in one of two ways: *link down* " +
			"(`ip link set down` on both ends of the client's link, as when an interface is disabled, the paper's " +
			"experiment) or *silent* (the router drops all traffic of the link; neither end is told). " +
			"Detection is the time from the failure until the client's Suspended event. The failure lasts a while " +
			"longer (0.5–1.5 s in a full run, so the link returns at a random phase of the reconnection attempts' backoff); " +
			"reconnection is the time from the link's return until the client's Resumed event. Both are " +
			"timed from the start of the command that fails or heals the link (`ip` or `nft`), so they include " +
			"part of its run time (median in the *cmd* column).\n\n")
		p("| policy | failure | heartbeat timeout | backoff cap | detection median ms | p95 ms | ÷timeout | reconnect median ms | p95 ms | outage median s | cmd ms | runs | suspended because |\n")
		p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, fr := range rep.Failure {
			p("| %s | %s | %v | %v | %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", fr.Policy, fr.Failure, fr.Timeout, fr.BackoffMax,
				f(Num(ms(fr.Detection.Median)), 0), f(Num(ms(fr.Detection.P95)), 0), f(fr.DetectionRatio, 2),
				f(Num(ms(fr.Reconnect.Median)), 0), f(Num(ms(fr.Reconnect.P95)), 0), f(fr.Outage, 1), f(Num(ms(fr.Command)), 0), fr.Detection.N, fr.Cause)
		}
		p("\n")
	}

	if len(rep.Scale) > 0 {
		p("## Idle rocks at scale\n\n")
		p("The listener and the dialing side run in two processes of their own on loopback; figures are per " +
			"rock beyond each process's baseline (listener or control client up, no rock), after a GC that " +
			"returns free memory to the kernel. CPU is measured over an idle window (heartbeats only, default " +
			"policy: one a second each way). Kernel socket memory is not included. *Suspended*: rock ends (both " +
			"sides) suspended at the end of the window, i.e. whose heartbeats did not keep up.\n\n")
		p("| rocks | side | RSS KiB/rock | heap KiB/rock | stack KiB/rock | goroutines/rock | CPU µs/s per rock | process CPU %% | baseline RSS MiB | dial all s | suspended |\n")
		p("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, s := range rep.Scale {
			for _, side := range []struct {
				name string
				c    SideCosts
				susp string
			}{{"listener", s.Server, ""}, {"dialer", s.Client, fmt.Sprint(s.Suspended)}} {
				p("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Rocks, side.name,
					f(kib(side.c.RSS), 1), f(kib(side.c.Heap), 1), f(kib(side.c.Stack), 1), f(side.c.Goroutines, 1),
					f(side.c.CPU*1e6, 1), f(side.c.CPUTotal*100, 1), f(side.c.BaseRSS/(1<<20), 1), f(s.SetupTime, 1), side.susp)
			}
		}
		for _, s := range rep.Scale {
			if s.Reached < s.Rocks {
				p("\nOnly %d of the %d rocks asked for were dialed within the time budget (%d dials failed", s.Reached, s.Rocks, s.DialFailures)
				if s.DialError != "" {
					p("; first: %s", s.DialError)
				}
				p("); the figures of that row are per rock reached.\n")
			}
		}
		p("\n")
		img("scale.png", "Memory per idle rock")
	}

	if t := rep.Tunnel; t != nil {
		p("## UDP tunnel\n\n")
		p("A UDP echo service on loopback reached directly, through rockudp's tunnel over a rock (the library "+
			"`rockudp tunnel` runs, both ends in this process) and through Debian's udptunnel. Rate: echoed "+
			"datagrams per second with %d in flight; RTT: one datagram at a time.\n\n", t.Window)
		p("| path | size | datagrams/s | ×direct | ×udptunnel | RTT µs | p95 µs | ×direct | ×udptunnel | lost |\n")
		p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, row := range t.Rows {
			p("| %s | %d B | %s | %s | %s | %s | %s | %s | %s | %d |\n", row.Path, row.Size, f(row.Rate.Median, 0),
				f(row.RateVsDirect, 2), f(row.RateVsUDPTunnel, 2), f(us(row.RTT.Median), 1), f(us(row.RTT.P95), 1),
				f(row.RTTVsDirect, 2), f(row.RTTVsUDPTunnel, 2), row.Lost)
		}
		p("\n")
		img("tunnel.png", "Tunnel datagram rate and round trip")
	}

	if ts := rep.Targets(); len(ts) > 0 {
		p("## Targets\n\n| target | measured | met |\n|---|---|---|\n")
		for _, t := range ts {
			met := "**no**"
			if t.Met {
				met = "yes"
			}
			p("| %s | %s | %s |\n", t.Target, t.Measured, met)
		}
		p("\n")
	}
	if len(rep.Notes) > 0 {
		p("## Notes\n\n")
		for _, n := range rep.Notes {
			p("- %s\n", n)
		}
		p("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Target is one of issue 10's targets, checked against a report.
type Target struct {
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

// Targets checks the report against the project's targets (those it has numbers for).
func (rep *Report) Targets() []Target {
	var ts []Target
	for _, l := range rep.Links {
		var worst1K, at100, worstLat = math.Inf(1), math.NaN(), math.Inf(-1)
		for _, row := range l.Rows {
			tr, lr := float64(row.ThroughputRatio), float64(row.LatencyRatio)
			if row.Size >= 1<<10 && !math.IsNaN(tr) {
				worst1K = math.Min(worst1K, tr)
			}
			if row.Size == 100 {
				at100 = tr
			}
			if !math.IsNaN(lr) {
				worstLat = math.Max(worstLat, lr)
			}
		}
		if !math.IsInf(worst1K, 1) {
			ts = append(ts, Target{l.Link + ": rock throughput ≥ 0.90× TCP from 1 KiB blocks", fmt.Sprintf("worst %.2f×", worst1K), worst1K >= 0.90})
		}
		if !math.IsNaN(at100) {
			ts = append(ts, Target{l.Link + ": rock throughput ≥ 0.80× TCP at 100 B", fmt.Sprintf("%.2f×", at100), at100 >= 0.80})
		}
		if !math.IsInf(worstLat, -1) {
			ts = append(ts, Target{l.Link + ": rock round trip ≤ 1.25× TCP", fmt.Sprintf("worst %.2f×", worstLat), worstLat <= 1.25})
		}
	}
	if s := rep.Setup; s != nil {
		for _, row := range s.Rows {
			switch row.Name {
			case "rock cold":
				ts = append(ts, Target{"connect, cold ≤ 8× TCP", fmt.Sprintf("%.1f×", float64(row.Ratio)), row.Ratio <= 8})
			case "rock cached":
				ts = append(ts, Target{"connect, cached ≤ 3× TCP (paper: about 18×)", fmt.Sprintf("%.1f×", float64(row.Ratio)), row.Ratio <= 3})
			}
		}
	}
	for _, fr := range rep.Failure {
		what := fr.Policy + " policy, " + fr.Failure
		ts = append(ts, Target{what + ": reconnection p95 ≤ 500 ms (paper: < 2 s)", fmt.Sprintf("%.0f ms", ms(fr.Reconnect.P95)), ms(fr.Reconnect.P95) <= 500})
		lim := fr.Timeout.Seconds() * 1.1
		ts = append(ts, Target{fmt.Sprintf("%s: detection within heartbeat timeout + 10 %% (%.0f ms)", what, lim*1000),
			fmt.Sprintf("median %.0f ms, p95 %.0f ms", ms(fr.Detection.Median), ms(fr.Detection.P95)), float64(fr.Detection.P95) <= lim})
	}
	for _, s := range rep.Scale {
		if s.Rocks == 10000 {
			worst := math.Max(float64(s.Server.RSS), float64(s.Client.RSS))
			reached := ""
			if s.Reached < s.Rocks {
				reached = fmt.Sprintf(" (only %d rocks reached)", s.Reached)
			}
			ts = append(ts, Target{"≤ 64 KiB resident memory per idle rock at 10,000 rocks", fmt.Sprintf("listener %.1f KiB, dialer %.1f KiB%s", kib(s.Server.RSS), kib(s.Client.RSS), reached), worst <= 64<<10 && s.Reached == s.Rocks})
		}
	}
	if t := rep.Tunnel; t != nil {
		for _, row := range t.Rows {
			if row.Path != "rockudp" || math.IsNaN(float64(row.RateVsUDPTunnel)) {
				continue
			}
			ts = append(ts, Target{fmt.Sprintf("tunnel rate ≥ 1.5× udptunnel (%d B)", row.Size), fmt.Sprintf("%.2f×", float64(row.RateVsUDPTunnel)), row.RateVsUDPTunnel >= 1.5})
			ts = append(ts, Target{fmt.Sprintf("tunnel round trip ≤ udptunnel's (%d B)", row.Size), fmt.Sprintf("%.2f×", float64(row.RTTVsUDPTunnel)), row.RTTVsUDPTunnel <= 1})
		}
	}
	return ts
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// f formats x with prec decimals, "–" when unknown.
func f(x Num, prec int) string {
	v := float64(x)
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

func mbps(bytesPerSec Num) Num { return bytesPerSec * 8 / 1e6 }
func us(sec Num) Num           { return sec * 1e6 }
func ms(sec Num) float64       { return float64(sec) * 1e3 }
func kib(b Num) Num            { return b / 1024 }
