package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/rockudp/rockudp/edp"
	"github.com/spf13/cobra"
)

func newEDPCmd(g *globalOpts) *cobra.Command {
	c := &cobra.Command{
		Use:   "edp",
		Short: "Enhancement Detection Protocol tools",
		Args:  cobra.NoArgs,
	}
	c.AddCommand(newEDPProbeCmd(g))
	return c
}

type edpProbeOpts struct {
	timeout time.Duration
	network string
}

func newEDPProbeCmd(g *globalOpts) *cobra.Command {
	o := &edpProbeOpts{}
	c := &cobra.Command{
		Use:   "probe HOST:PORT",
		Short: "Find out whether a TCP server is EDP-enhanced",
		Long: `probe runs the client probe of the Enhancement Detection Protocol against HOST:PORT:
it connects, half-closes and reads the server's announcement. It prints

  enhanced NAME/VERSION ...   the server is enhanced and offers these enhancements
  ordinary REASON             it is an ordinary server (REASON: closed, reset, data, timeout,
                              or truncated: an announcement cut short)

and exits 0 in both cases. It exits non-zero only when HOST:PORT cannot be reached.`,
		Example: "  rockudp edp probe 127.0.0.1:7000",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runEDPProbe(cmd.Context(), cmd, g, o, args[0])
		},
	}
	c.Flags().DurationVar(&o.timeout, "timeout", 10*time.Second, "give up after this long")
	c.Flags().StringVar(&o.network, "network", "tcp", "network: tcp, tcp4 or tcp6")
	return c
}

func runEDPProbe(ctx context.Context, cmd *cobra.Command, g *globalOpts, o *edpProbeOpts, addr string) error {
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout must be positive, got %v", o.timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	start := time.Now()
	res, err := edp.Probe(ctx, o.network, addr, &edp.Config{Logger: g.logger})
	if err != nil {
		return fmt.Errorf("cannot probe %s: %w", addr, err)
	}
	g.logger.Debug("probe finished", "addr", addr, "took", time.Since(start))
	out := cmd.OutOrStdout()
	if !res.Enhanced {
		fmt.Fprintf(out, "ordinary %s\n", res.Reason)
		return nil
	}
	ids := make([]string, len(res.Offered))
	for i, id := range res.Offered {
		ids[i] = id.String()
	}
	fmt.Fprintln(out, strings.TrimSpace("enhanced "+strings.Join(ids, " ")))
	return nil
}
