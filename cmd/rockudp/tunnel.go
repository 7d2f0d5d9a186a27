package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/rockudp/rockudp/internal/control"
	"github.com/rockudp/rockudp/tcprocks"
	"github.com/rockudp/rockudp/tunnel"
	"github.com/spf13/cobra"
)

func newTunnelCmd(g *globalOpts) *cobra.Command {
	c := &cobra.Command{
		Use:   "tunnel",
		Short: "Carry a UDP service over a rock (for networks that block UDP, or flows that must survive moves)",
		Long: `The tunnel client accepts datagrams on a local UDP address from any number of sources
(each source is a flow) and carries them, framed, over one rock to the tunnel server,
which sends each flow from its own UDP socket to the service, so replies return to the
right source. While the rock is suspended datagrams wait in a bounded queue; --max-age
drops those that would arrive older than that (0 keeps all).`,
		Args: cobra.NoArgs,
	}
	c.AddCommand(newTunnelServerCmd(g), newTunnelClientCmd(g))
	return c
}

// tunnelOpts are the flags both tunnel ends share.
type tunnelOpts struct {
	rock     rockOpts
	maxAge   time.Duration
	maxQueue int
	maxFlows int
	idle     time.Duration
}

func (o *tunnelOpts) add(c *cobra.Command) {
	o.rock.add(c)
	f := c.Flags()
	f.DurationVar(&o.maxAge, "max-age", 0, "drop datagrams this end sends that would arrive older than this (0: keep all)")
	f.IntVar(&o.maxQueue, "max-queue", tunnel.DefaultMaxQueue, "bytes of datagrams queued while the rock is suspended")
	f.IntVar(&o.maxFlows, "max-flows", tunnel.DefaultMaxFlows, "flows (source addresses) at once")
	f.DurationVar(&o.idle, "idle-timeout", tunnel.DefaultIdleTimeout, "end a flow after this long without a datagram")
}

func (o *tunnelOpts) config(log *slog.Logger) (*tunnel.Config, error) {
	if o.maxAge < 0 || o.maxQueue <= 0 || o.maxFlows <= 0 || o.idle <= 0 {
		return nil, errors.New("--max-age must not be negative; --max-queue, --max-flows and --idle-timeout must be positive")
	}
	return &tunnel.Config{MaxAge: o.maxAge, MaxQueue: o.maxQueue, MaxFlows: o.maxFlows,
		IdleTimeout: o.idle, Logger: log}, nil
}

func newTunnelServerCmd(g *globalOpts) *cobra.Command {
	var (
		o          tunnelOpts
		listen, to string
		noAuth     bool
	)
	c := &cobra.Command{
		Use:     "server",
		Short:   "Accept tunnel rocks and send their datagrams to a UDP service",
		Example: "  rockudp tunnel server --listen :7001 --to 127.0.0.1:53 --psk-file rockudp.psk",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.rock.pskFile == "" && !noAuth {
				return errors.New("refusing to run an open UDP forwarder: give --psk-file (rockudp keygen makes one) or --no-auth")
			}
			if to == "" {
				return errors.New("--to HOST:PORT is required: the UDP service to send to")
			}
			if _, err := net.ResolveUDPAddr("udp", to); err != nil {
				return fmt.Errorf("--to %s: %w", to, err)
			}
			tcfg, err := o.config(g.logger)
			if err != nil {
				return err
			}
			tr := newRockTracker()
			cfg, err := o.rock.config(g.logger, tr)
			if err != nil {
				return err
			}
			stopMetrics, err := o.rock.startMetrics(cmd.Context(), tr, g.logger)
			if err != nil {
				return err
			}
			defer stopMetrics()
			ln, err := tcprocks.Listen("tcp", listen, cfg)
			if err != nil {
				return fmt.Errorf("cannot listen on %s: %w", listen, err)
			}
			acc, err := tunnel.Serve(&trackedListener{Listener: ln, tr: tr}, to, tcfg)
			if err != nil {
				return err
			}
			if tr.m != nil {
				tr.m.addTunnel(acc.Stats)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "tunnel server on %s (tcp + udp), datagrams to udp %s\n", ln.Addr(), to)
			defer startStatusFor(tr, "tunnel server", fmt.Sprintf("%s -> udp %s", ln.Addr(), to), g.logger)()
			select {
			case <-cmd.Context().Done():
			case <-acc.Done():
			}
			interrupted := cmd.Context().Err() != nil
			acc.Close()
			finishClosing(tr, g)
			if interrupted { // we closed it: its error is our own close
				return nil
			}
			return acc.Err()
		},
	}
	o.add(c)
	c.Flags().StringVar(&listen, "listen", ":7001", "address to accept tunnel rocks on")
	c.Flags().StringVar(&to, "to", "", "UDP service to send the datagrams to (HOST:PORT, required)")
	c.Flags().BoolVar(&noAuth, "no-auth", false, "run without a pre-shared key: anyone who reaches --listen reaches --to")
	c.MarkFlagsMutuallyExclusive("psk-file", "no-auth")
	return c
}

func newTunnelClientCmd(g *globalOpts) *cobra.Command {
	var (
		o              tunnelOpts
		listen, server string
	)
	c := &cobra.Command{
		Use:     "client",
		Short:   "Accept datagrams on a local UDP address and carry them over a rock to a tunnel server",
		Example: "  rockudp tunnel client --listen 127.0.0.1:5353 --server host:7001 --psk-file rockudp.psk",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if server == "" {
				return errors.New("--server HOST:PORT is required: the rockudp tunnel server")
			}
			if listen == "" {
				return errors.New("--listen UDP-ADDR is required: where local applications send their datagrams")
			}
			tcfg, err := o.config(g.logger)
			if err != nil {
				return err
			}
			tr := newRockTracker()
			cfg, err := o.rock.config(g.logger, tr)
			if err != nil {
				return err
			}
			laddr, err := net.ResolveUDPAddr("udp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			uc, err := net.ListenUDP("udp", laddr)
			if err != nil {
				return fmt.Errorf("cannot listen on udp %s: %w", listen, err)
			}
			cc, err := control.NewClient(&control.ClientConfig{Logger: g.logger})
			if err != nil {
				uc.Close()
				return err
			}
			defer cc.Close()
			cfg.ControlClient = cc
			ctx := cmd.Context()
			stopMetrics, err := o.rock.startMetrics(ctx, tr, g.logger)
			if err != nil {
				uc.Close()
				return err
			}
			defer stopMetrics()
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			rock, err := tcprocks.Dial(dctx, "tcp", server, cfg)
			cancel()
			if err != nil {
				uc.Close()
				return fmt.Errorf("cannot connect to %s: %w", server, err)
			}
			tr.add(rock)
			cl, err := tunnel.NewClient(rock, uc, tcfg)
			if err != nil {
				return err
			}
			if tr.m != nil {
				tr.m.addTunnel(cl.Stats)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "tunnel client on udp %s, carried over a rock to %s\n", cl.LocalAddr(), server)
			defer startStatusFor(tr, "tunnel client", fmt.Sprintf("udp %s -> %s", cl.LocalAddr(), server), g.logger)()
			select {
			case <-ctx.Done():
			case <-cl.Done():
			}
			interrupted := ctx.Err() != nil
			cl.Close()
			finishClosing(tr, g)
			if interrupted {
				return nil
			}
			return fmt.Errorf("tunnel ended: %w", cl.Err())
		},
	}
	o.add(c)
	c.Flags().StringVar(&listen, "listen", "", "local UDP address applications send to (required)")
	c.Flags().StringVar(&server, "server", "", "rockudp tunnel server (HOST:PORT, required)")
	return c
}
