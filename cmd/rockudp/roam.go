package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/locator"
	"github.com/spf13/cobra"
)

// registerOpts are serve's flags for publishing its address in the DNS (--register).
type registerOpts struct {
	name   string
	server string
	zone   string
	ttl    time.Duration
	keys   keyFlags
}

func (o *registerOpts) add(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&o.name, "register", "", "keep this DNS name pointing at --listen (RFC 2136 update, TSIG-signed; needs --tsig-key or --tsig-key-file); clients learn the name and look it up when this server moves")
	f.StringVar(&o.server, "locator-server", locator.DefaultServer, "DNS server that takes the updates of --register (HOST:PORT)")
	f.StringVar(&o.zone, "locator-zone", "", "zone of the --register name (default: asked from the server)")
	f.DurationVar(&o.ttl, "register-ttl", locator.DefaultTTL, "TTL of the registered records")
	o.keys.add(c)
}

// start keeps o.name registered for the listener's address until stop is called. The
// first registration is made at once, so that a wrong key or server is an error here;
// stop removes the records. Without --register it does nothing.
func (o *registerOpts) start(ctx context.Context, listen net.Addr, log *slog.Logger) (stop func(), err error) {
	if o.name == "" {
		return func() {}, nil
	}
	cfg, reg, err := o.check(listen)
	if err != nil {
		return nil, err
	}
	first := hostAddrs()
	if reg.Addrs != nil {
		first = reg.Addrs()
	}
	if len(first) > 0 {
		if err := locator.Register(ctx, cfg, reg.Name, reg.Port, first); err != nil {
			return nil, fmt.Errorf("--register %s: cannot register at %s: %w", o.name, o.server, err)
		}
	}
	cfg.Logger = log // failures from now on are logged by the Registrar
	reg.OnUpdate = func(s locator.RegistrarStatus) {
		if s.Err == nil {
			log.Info("registered", "name", reg.Name, "port", reg.Port, "addrs", s.Addrs)
		}
	}
	r, err := locator.NewRegistrar(cfg, reg)
	if err != nil {
		return nil, fmt.Errorf("--register %s: %w", o.name, err)
	}
	return func() {
		if err := r.Close(); err != nil {
			log.Warn("could not remove the registration", "name", reg.Name, "err", err)
		}
	}, nil
}

// canonicalName returns the --register name in canonical form ("" without --register).
func (o *registerOpts) canonicalName() (string, error) {
	if o.name == "" {
		return "", nil
	}
	name, err := locator.CanonicalName(o.name)
	if err != nil {
		return "", fmt.Errorf("--register %q: %w", o.name, err)
	}
	return name, nil
}

// check validates the --register flags against the listener's address and returns the
// Registrar's configuration. A listener bound to one IP publishes that IP; one bound to
// all addresses publishes the host's addresses and follows their changes.
func (o *registerOpts) check(listen net.Addr) (*locator.Config, locator.Registration, error) {
	var reg locator.Registration
	name, err := o.canonicalName()
	if err != nil {
		return nil, reg, err
	}
	k, ok, err := o.keys.key()
	if err != nil {
		return nil, reg, err
	}
	if !ok {
		return nil, reg, errors.New("--register needs a TSIG key (--tsig-key or --tsig-key-file): the DNS server refuses unsigned updates")
	}
	if o.ttl < time.Second {
		return nil, reg, fmt.Errorf("--register-ttl %v: want at least 1s", o.ttl)
	}
	if _, _, err := net.SplitHostPort(o.server); err != nil {
		return nil, reg, fmt.Errorf("--locator-server %q: want HOST:PORT", o.server)
	}
	ap, err := netip.ParseAddrPort(listen.String())
	if err != nil {
		return nil, reg, fmt.Errorf("--register: listening on %s, which is not IP:PORT", listen)
	}
	reg = locator.Registration{Name: name, Port: ap.Port()}
	if ip := ap.Addr().Unmap(); !ip.IsUnspecified() {
		reg.Addrs = func() []netip.Addr { return []netip.Addr{ip} }
	}
	return &locator.Config{Server: o.server, Zone: o.zone, Key: &k, TTL: o.ttl}, reg, nil
}

// locateOpts are connect's flags for finding a server that moved (--locate).
type locateOpts struct {
	name   string // announcedName: the name the server announced
	server string
}

// announcedName is --locate's value when given without a name.
const announcedName = "(announced)"

func (o *locateOpts) add(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&o.name, "locate", "", "when the server's last address fails, look it up in the DNS under the name it announced, or under --locate NAME")
	f.Lookup("locate").NoOptDefVal = announcedName
	f.StringVar(&o.server, "locator-server", locator.DefaultServer, "DNS server to ask for --locate (HOST:PORT)")
}

// args accepts "--locate NAME" (pflag reads it as --locate followed by an argument).
func (o *locateOpts) args(c *cobra.Command, args []string) error {
	if len(args) == 1 && o.name == announcedName && c.Flags().Changed("locate") {
		o.name = args[0]
		return nil
	}
	return cobra.NoArgs(c, args)
}

// locator returns the rocks' Locator, nil without --locate.
// A name without an SRV record is paired with the port of server (connect's --server).
func (o *locateOpts) locator(server string, log *slog.Logger) (callbacks.Locator, error) {
	if o.name == "" {
		return nil, nil
	}
	if _, _, err := net.SplitHostPort(o.server); err != nil {
		return nil, fmt.Errorf("--locator-server %q: want HOST:PORT", o.server)
	}
	cfg := &locator.Config{Server: o.server, DefaultPort: portOf(server), Logger: log}
	if o.name == announcedName {
		return locator.NewLocatorFunc(cfg, func(q callbacks.Query) string { return q.Name }), nil
	}
	name, err := locator.CanonicalName(o.name)
	if err != nil {
		return nil, fmt.Errorf("--locate %q: %w", o.name, err)
	}
	return locator.NewLocator(cfg, name), nil
}

// portOf returns the port of a "host:port" address, 0 if it has none.
func portOf(addr string) uint16 {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(p, 10, 16)
	return uint16(n)
}
