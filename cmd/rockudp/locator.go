package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/rockudp/rockudp/internal/netmon"
	"github.com/rockudp/rockudp/locator"
	"github.com/spf13/cobra"
)

func newLocatorCmd(g *globalOpts) *cobra.Command {
	c := &cobra.Command{
		Use:   "locator",
		Short: "DNS-registered roaming endpoints: an embedded DNS server, registration and lookup",
		Long: `A rock reconnects to its peer's last known address. When that address is dead (the
server moved, or both ends moved while disconnected) it can look the peer up in DNS.
Endpoints register their current addresses by RFC 2136 dynamic update, signed with a
TSIG key, in the embedded server ("locator serve") or any RFC 2136 server (BIND 9).`,
		Args: cobra.NoArgs,
	}
	c.AddCommand(newLocatorServeCmd(g), newLocatorRegisterCmd(g), newLocatorLookupCmd(g))
	return c
}

// keyFlags are the two ways to give a TSIG key.
type keyFlags struct {
	inline string // NAME:BASE64
	file   string // BIND key file
}

func (k *keyFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&k.inline, "tsig-key", "", "TSIG key as NAME:BASE64 (hmac-sha256)")
	c.Flags().StringVar(&k.file, "tsig-key-file", "", "TSIG key in a BIND key file (as written by tsig-keygen)")
	c.MarkFlagsMutuallyExclusive("tsig-key", "tsig-key-file")
}

// key returns the key given by the flags; ok is false when none was given.
func (k *keyFlags) key() (key locator.Key, ok bool, err error) {
	switch {
	case k.file != "":
		key, err = locator.LoadKey(k.file)
		return key, err == nil, err
	case k.inline != "":
		name, secret, found := strings.Cut(k.inline, ":")
		if !found || name == "" || secret == "" {
			return key, false, fmt.Errorf("--tsig-key %q: want NAME:BASE64", k.inline)
		}
		if _, err := base64.StdEncoding.DecodeString(secret); err != nil {
			return key, false, fmt.Errorf("--tsig-key: the secret is not base64: %v", err)
		}
		return locator.Key{Name: name, Secret: secret}, true, nil
	}
	return key, false, nil
}

func newLocatorServeCmd(g *globalOpts) *cobra.Command {
	var (
		listen, zone, zoneFile string
		keys                   keyFlags
		notify                 []string
	)
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run the embedded authoritative DNS server for a zone",
		Long: `serve answers A, AAAA, SRV, TXT, SOA and NS queries for the zone over UDP and TCP,
accepts RFC 2136 updates only when signed with the TSIG key, and serves zone transfers
(AXFR, signed) to ordinary secondaries. With --zone-file the zone survives restarts.`,
		Example: `  rockudp locator serve --listen 127.0.0.1:5353 --zone roam.example. \
      --tsig-key rockudp-key.:$(head -c32 /dev/urandom | base64) --zone-file roam.zone`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			k, ok, err := keys.key()
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("a TSIG key is required (--tsig-key or --tsig-key-file): without one every update is refused")
			}
			srv, err := locator.Listen(listen, &locator.ServerConfig{Zone: zone, Keys: []locator.Key{k},
				File: zoneFile, Notify: notify, Logger: g.logger})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "serving zone %s on %s (udp and tcp), serial %d\n", srv.Zone(), srv.Addr(), srv.Serial())
			<-cmd.Context().Done()
			return srv.Close()
		},
	}
	c.Flags().StringVar(&listen, "listen", "127.0.0.1:53", "address to serve on (UDP and TCP)")
	c.Flags().StringVar(&zone, "zone", locator.DefaultZone, "zone to serve")
	c.Flags().StringVar(&zoneFile, "zone-file", "", "zone file to load at start and rewrite after every change")
	c.Flags().StringSliceVar(&notify, "notify", nil, "secondaries (HOST:PORT) to NOTIFY after every change")
	keys.add(c)
	return c
}

func newLocatorRegisterCmd(g *globalOpts) *cobra.Command {
	var (
		server, zone, name string
		port               uint16
		addrs              []string
		ttl                time.Duration
		watch              bool
		keys               keyFlags
	)
	c := &cobra.Command{
		Use:   "register",
		Short: "Publish this host's addresses under a name (once, or kept current with --watch)",
		Long: `register replaces NAME's A and AAAA records and its SRV record for PORT with a single
TSIG-signed RFC 2136 update. With --watch it keeps them current until interrupted: again
at once whenever a local address changes, and before the TTL runs out; on exit it removes
them.`,
		Example: `  rockudp locator register --server 127.0.0.1:5353 --zone roam.example. \
      --name laptop.roam.example. --port 7000 --tsig-key rockudp-key.:BASE64 --watch`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			k, ok, err := keys.key()
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("a TSIG key is required (--tsig-key or --tsig-key-file)")
			}
			if port == 0 {
				return fmt.Errorf("--port is required: the port peers should connect to")
			}
			var fixed []netip.Addr
			for _, a := range addrs {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					return fmt.Errorf("--addr %q: %v", a, err)
				}
				fixed = append(fixed, ip)
			}
			cfg := &locator.Config{Server: server, Zone: zone, Key: &k, TTL: ttl, Logger: g.logger}
			out := cmd.OutOrStdout()
			if !watch {
				if fixed == nil {
					fixed = hostAddrs()
				}
				if err := locator.Register(cmd.Context(), cfg, name, port, fixed); err != nil {
					return err
				}
				fmt.Fprintf(out, "registered %s port %d: %v\n", name, port, fixed)
				return nil
			}
			return watchRegistration(cmd.Context(), out, cfg, name, port, fixed)
		},
	}
	c.Flags().StringVar(&server, "server", locator.DefaultServer, "DNS server that takes the updates (HOST:PORT)")
	c.Flags().StringVar(&zone, "zone", "", "zone of the name (default: asked from the server)")
	c.Flags().StringVar(&name, "name", "", "name to register (required)")
	c.Flags().Uint16Var(&port, "port", 0, "port published in the SRV record (required)")
	c.Flags().StringSliceVar(&addrs, "addr", nil, "addresses to publish (default: this host's global addresses)")
	c.Flags().DurationVar(&ttl, "ttl", 30*time.Second, "TTL of the records")
	c.Flags().BoolVar(&watch, "watch", false, "keep the registration current until interrupted")
	c.MarkFlagRequired("name")
	keys.add(c)
	return c
}

// watchRegistration keeps name registered until ctx ends, re-registering at once when a
// local address changes, then removes the records.
func watchRegistration(ctx context.Context, out io.Writer,
	cfg *locator.Config, name string, port uint16, fixed []netip.Addr) error {
	reg := locator.Registration{Name: name, Port: port, OnUpdate: func(s locator.RegistrarStatus) {
		if s.Err != nil {
			fmt.Fprintf(out, "%s  registration failed (attempt %d): %v\n", time.Now().Format(time.TimeOnly), s.Attempts, s.Err)
			return
		}
		fmt.Fprintf(out, "%s  registered %s port %d: %v\n", time.Now().Format(time.TimeOnly), name, port, s.Addrs)
	}}
	if fixed != nil {
		reg.Addrs = func() []netip.Addr { return fixed }
	}
	r, err := locator.NewRegistrar(cfg, reg) // without fixed addresses, it follows the host's
	if err != nil {
		return err
	}
	<-ctx.Done()
	if err := r.Close(); err != nil {
		return fmt.Errorf("removing the records of %s: %w", name, err)
	}
	fmt.Fprintf(out, "removed the records of %s\n", name)
	return nil
}

// hostAddrs returns this host's global unicast addresses (what a Registrar publishes by
// default), for a one-shot registration.
func hostAddrs() []netip.Addr {
	mon, err := netmon.New(nil)
	if err != nil {
		return nil
	}
	defer mon.Close()
	var out []netip.Addr
	for _, p := range mon.Addrs() {
		if a := p.Addr(); a.IsGlobalUnicast() && !a.IsLinkLocalUnicast() {
			out = append(out, a)
		}
	}
	return out
}

func newLocatorLookupCmd(g *globalOpts) *cobra.Command {
	var (
		server string
		port   uint16
	)
	c := &cobra.Command{
		Use:     "lookup NAME",
		Short:   "Print the addresses (HOST:PORT, best first) registered under NAME",
		Example: "  rockudp locator lookup laptop.roam.example. --server 127.0.0.1:5353",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			got, err := locator.Lookup(cmd.Context(), &locator.Config{Server: server, DefaultPort: port,
				Logger: g.logger}, args[0])
			if err != nil {
				return err
			}
			if len(got) == 0 {
				return fmt.Errorf("%s has no registered addresses at %s", args[0], server)
			}
			for _, a := range got {
				fmt.Fprintln(cmd.OutOrStdout(), a)
			}
			return nil
		},
	}
	c.Flags().StringVar(&server, "server", locator.DefaultServer, "DNS server to ask (HOST:PORT)")
	c.Flags().Uint16Var(&port, "port", 0, "port to pair with addresses when NAME has no SRV record")
	return c
}
