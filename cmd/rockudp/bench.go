package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/rockudp/rockudp/internal/bench"
)

// benchOpts are the bench command's options. child says how to start a child process that
// runs `bench child ARG` (tests replace it: their executable is the test binary).
type benchOpts struct {
	quick    bool
	out      string
	json     bool
	noLab    bool
	profile  string
	from     string
	rocks    []int
	sections []string
	child    func(arg string) (path string, args, env []string)
}

func newBenchCmd(g *globalOpts) *cobra.Command {
	return newBenchCmdWith(g, selfChild)
}

// selfChild runs this executable's `bench child ARG`.
func selfChild(arg string) (string, []string, []string) {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	return exe, []string{"bench", "child", arg}, nil
}

func newBenchCmdWith(g *globalOpts, child func(string) (string, []string, []string)) *cobra.Command {
	o := &benchOpts{child: child}
	c := &cobra.Command{
		Use:   "bench",
		Short: "Measure what rocks cost, side by side with plain TCP and udptunnel",
		Long: `bench reproduces the measurements of the rocks paper's section 9 for rockudp, on this
machine, in one run: throughput and round-trip latency by block size (Figure 6) for
plain TCP and rocks, on loopback and (as root) over network-lab links shaped like the
paper's three; connection set-up, cold and cached (Table 1), with where the time goes;
failure detection and reconnection in the lab (root); memory, goroutines and heartbeat
CPU of idle rocks at 100, 1,000 and 10,000 rocks; and the UDP tunnel against direct UDP
and Debian's udptunnel. Contenders alternate, every measurement is repeated, medians
are reported with ratios against each row's baseline.

With --out DIR it writes DIR/report.md and PNG plots (and DIR/report.json with --json);
otherwise it prints the Markdown report (or JSON with --json). A progress line goes to
standard error. The full run takes up to 15 minutes; --quick runs a reduced set in
well under a minute, to check that everything works.`,
		Example: "  rockudp bench --out bench-report\n  rockudp bench --quick\n  sudo rockudp bench --sections blocks,setup --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBench(cmd, g, o)
		},
	}
	f := c.Flags()
	f.BoolVar(&o.quick, "quick", false, "run a reduced set in well under a minute (numbers not meant to be judged)")
	f.StringVar(&o.out, "out", "", "write report.md and the PNG plots (and report.json with --json) into this directory")
	f.BoolVar(&o.json, "json", false, "also write the results as JSON (to standard output without --out)")
	f.BoolVar(&o.noLab, "no-lab", false, "skip the parts that need root and network namespaces")
	f.StringVar(&o.profile, "profile", "", "write heap and CPU profiles (pprof) of the idle-rock processes into this directory")
	f.IntSliceVar(&o.rocks, "rocks", nil, "numbers of idle rocks the scale section measures (default 100,1000,10000; quick: 100)")
	f.StringVar(&o.from, "from", "", "measure nothing: render the report and plots of an earlier run's report.json")
	f.StringSliceVar(&o.sections, "sections", nil, "measure only these sections: "+strings.Join(bench.AllSections(), ", "))
	c.AddCommand(&cobra.Command{
		Use:    "child ARG",
		Short:  "Internal: one process of a bench run",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return bench.RunChild(cmd.Context(), args[0], cmd.InOrStdin(), cmd.OutOrStdout())
		},
	})
	return c
}

func runBench(cmd *cobra.Command, g *globalOpts, o *benchOpts) error {
	stderr := cmd.ErrOrStderr()
	tty := isTerminal(stderr)
	cfg := &bench.Config{
		Quick: o.quick, Sections: o.sections, NoLab: o.noLab, Child: o.child, Logger: g.logger, ProfileDir: o.profile, ScaleCounts: o.rocks,
		Command: "rockudp " + strings.Join(os.Args[1:], " "),
		Progress: func(p bench.Progress) {
			if tty {
				fmt.Fprintf(stderr, "\r\033[K%s", p)
			} else {
				fmt.Fprintln(stderr, p)
			}
		},
	}
	if filepath.Base(os.Args[0]) != "rockudp" || len(os.Args) < 2 || os.Args[1] != "bench" {
		cfg.Command = "rockudp " + strings.Join(benchArgs(o), " ")
	}
	var rep *bench.Report
	var runErr error
	if o.from != "" {
		b, err := os.ReadFile(o.from)
		if err != nil {
			return err
		}
		rep = &bench.Report{}
		if err := json.Unmarshal(b, rep); err != nil {
			return fmt.Errorf("--from %s: %w", o.from, err)
		}
	} else {
		rep, runErr = bench.Run(cmd.Context(), cfg)
	}
	if tty && o.from == "" {
		fmt.Fprintln(stderr)
	}
	if rep == nil {
		return runErr
	}
	out := cmd.OutOrStdout()
	if o.out == "" {
		var err error
		if o.json {
			err = rep.JSON(out)
		} else {
			fmt.Fprint(out, "# rockudp bench report\n\n")
			err = rep.WriteMarkdown(out, "")
		}
		if err != nil {
			return err
		}
		return runErr
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	imgs, err := rep.WritePlots(o.out)
	if err != nil {
		return err
	}
	files := []string{"report.md"}
	if err := writeFile(filepath.Join(o.out, "report.md"), func(w io.Writer) error {
		fmt.Fprint(w, "# rockudp bench report\n\n")
		return rep.WriteMarkdown(w, ".")
	}); err != nil {
		return err
	}
	if o.json {
		files = append(files, "report.json")
		if err := writeFile(filepath.Join(o.out, "report.json"), rep.JSON); err != nil {
			return err
		}
	}
	files = append(files, imgs...)
	fmt.Fprintf(out, "wrote %s in %s\n", strings.Join(files, ", "), o.out)
	for _, t := range rep.Targets() {
		met := "MISSED"
		if t.Met {
			met = "met"
		}
		fmt.Fprintf(out, "%-6s %s: %s\n", met, t.Target, t.Measured)
	}
	return runErr
}

// benchArgs rebuilds the command line from the options (for the report, when the process
// is not rockudp itself, as in tests).
func benchArgs(o *benchOpts) []string {
	args := []string{"bench"}
	if o.quick {
		args = append(args, "--quick")
	}
	if o.noLab {
		args = append(args, "--no-lab")
	}
	if len(o.sections) > 0 {
		args = append(args, "--sections", strings.Join(o.sections, ","))
	}
	if o.out != "" {
		args = append(args, "--out", o.out)
	}
	if o.json {
		args = append(args, "--json")
	}
	return args
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
