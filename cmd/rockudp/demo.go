package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newDemoCmd(g *globalOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "A self-contained showcase of rockudp on loopback",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := fmt.Fprint(cmd.OutOrStdout(), demoPlan)
			return err
		},
	}
}

// demoPlan is what the demo prints until the rock core exists to run it for real.
const demoPlan = `rockudp demo — not built yet.

When the reliable-socket core lands, this command will, in one process on loopback
and with nothing installed:
  1. start a small TCP service, a rockudp server in front of it and a rockudp client,
     joined through a fault-injecting relay;
  2. stream data both ways while the relay resets the path, blackholes it past the
     heartbeat timeout and refuses reconnections for a while;
  3. show each suspension and resumption live, with its downtime;
  4. end with a table: bytes verified by SHA-256 at both ends, failures survived,
     detection and recovery times.

Today you can already try the Enhancement Detection Protocol:
  go run ./cmd/rockudp edp probe HOST:PORT
`
