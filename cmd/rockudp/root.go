package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"
)

// globalOpts holds the flags every subcommand shares.
type globalOpts struct {
	logLevel  string
	logFormat string
	stderr    io.Writer
	logger    *slog.Logger // built in PersistentPreRunE from the flags above
}

// newRootCmd builds a fresh command tree, so tests get clean flag state every time.
func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globalOpts{stderr: stderr}
	root := &cobra.Command{
		Use:   "rockudp",
		Short: "Network conversations that survive moving machines",
		Long: `rockudp keeps network conversations alive while the machines under them move:
address changes, lost links and long suspensions. It implements reliable sockets
("rocks") over TCP, the Enhancement Detection Protocol (EDP) that finds out whether
a peer is enhanced and falls back to plain TCP when it is not, and tools built on them.

Start with "rockudp demo".`,
		SilenceErrors: true, // main prints the error once, on one line
		// No usage dump on errors: it would hide the one line that names the problem (and
		// with connect --stdio, standard output is the data stream). Flag errors point to
		// --help instead.
		SilenceUsage: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			l, err := newLogger(g.stderr, g.logLevel, g.logFormat)
			if err != nil {
				return err
			}
			g.logger = l
			return nil
		},
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w (see %s --help)", err, c.CommandPath())
	})
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.AddCommand(
		newVersionCmd(),
		newEDPCmd(g),
		newDemoCmd(g),
		newLocatorCmd(g),
		newKeygenCmd(),
		newServeCmd(g),
		newConnectCmd(g),
		newTunnelCmd(g),
		newStatusCmd(g),
		newBenchCmd(g),
	)
	return root
}

// newLogger returns a logger writing to w at the named level and format.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
}
