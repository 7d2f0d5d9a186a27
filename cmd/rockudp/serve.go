package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/internal/control"
	"github.com/rockudp/rockudp/internal/forward"
	"github.com/rockudp/rockudp/internal/pskauth"
	"github.com/rockudp/rockudp/tcprocks"
	"github.com/spf13/cobra"
)

// rockOpts are the flags serve and connect share.
type rockOpts struct {
	pskFile          string
	heartbeat        time.Duration
	misses           int
	reconnectTimeout time.Duration
	resumeTimeout    time.Duration
	metricsAddr      string
}

func (o *rockOpts) add(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&o.pskFile, "psk-file", "", "pre-shared key file (rockudp keygen); both ends must use the same one")
	f.DurationVar(&o.heartbeat, "heartbeat", callbacks.DefaultHeartbeatInterval, "heartbeat interval")
	f.IntVar(&o.misses, "misses", callbacks.DefaultMissedHeartbeats, "missed heartbeats before a rock suspends")
	f.DurationVar(&o.reconnectTimeout, "reconnect-timeout", callbacks.DefaultReconnectTimeout,
		"how long a suspended rock keeps trying before it closes (0: never give up)")
	f.DurationVar(&o.resumeTimeout, "resume-timeout", tcprocks.DefaultResumeTimeout,
		"how long one reconnection attempt to one address may take before the next address is tried")
	f.StringVar(&o.metricsAddr, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics")
}

// startMetrics serves --metrics when given and connects it to tr; stop is never nil.
func (o *rockOpts) startMetrics(ctx context.Context, tr *rockTracker, log *slog.Logger) (stop func(), err error) {
	if o.metricsAddr == "" {
		return func() {}, nil
	}
	tr.m = newMetrics()
	return serveMetrics(ctx, o.metricsAddr, tr.m, log)
}

// config builds the rocks' Config: policy, event logging and, with a key file, the
// pre-shared key (mixed into the key schedule and proven at init and every reconnection).
func (o *rockOpts) config(log *slog.Logger, tr *rockTracker) (*tcprocks.Config, error) {
	if o.heartbeat <= 0 || o.misses <= 0 {
		return nil, errors.New("--heartbeat and --misses must be positive")
	}
	if o.reconnectTimeout < 0 {
		return nil, errors.New("--reconnect-timeout must not be negative (0 means never give up)")
	}
	if o.resumeTimeout <= 0 {
		return nil, errors.New("--resume-timeout must be positive")
	}
	rt := o.reconnectTimeout
	if rt == 0 {
		rt = callbacks.NoTimeout
	}
	cfg := &tcprocks.Config{
		Policy:        callbacks.Policy{HeartbeatInterval: o.heartbeat, MissedHeartbeats: o.misses, ReconnectTimeout: rt},
		Handler:       handlers{logEvents(log), tr},
		ResumeTimeout: o.resumeTimeout,
		Logger:        log,
	}
	if o.pskFile != "" {
		// tcprocks mixes the key into every rock's keys and confirms it at initialisation;
		// resumptions prove keys derived from it.
		key, err := pskauth.LoadFile(o.pskFile)
		if err != nil {
			return nil, err
		}
		cfg.PSK, cfg.RequireEnhanced = key, true
	}
	return cfg, nil
}

// logEvents logs one line per rock event.
func logEvents(log *slog.Logger) callbacks.Handler {
	return callbacks.HandlerFunc(func(e callbacks.Event) {
		id := hex.EncodeToString(e.ID[:4])
		switch e.Kind {
		case callbacks.Suspended:
			log.Warn("rock suspended", "rock", id, "cause", e.Cause)
		case callbacks.Reconnecting:
			log.Debug("rock reconnecting", "rock", id, "attempt", e.Attempt, "target", e.Target)
		case callbacks.Resumed:
			log.Info("rock resumed", "rock", id, "downtime", e.Downtime.Round(time.Millisecond),
				"replayed_bytes", e.Replayed, "local", e.Local, "remote", e.Remote)
		case callbacks.Closed:
			if errors.Is(e.Cause, tcprocks.ErrExported) {
				log.Info("rock exported", "rock", id)
			} else if e.Cause != nil {
				log.Warn("rock closed", "rock", id, "cause", e.Cause)
			} else {
				log.Info("rock closed", "rock", id)
			}
		case callbacks.TimedOut:
			log.Warn("rock gave up reconnecting", "rock", id, "downtime", e.Downtime.Round(time.Second))
		}
	})
}

// closeGrace is how long a command lets its rocks finish their graceful closes (deliver
// what remains, exchange FINs) before it exits anyway.
const closeGrace = 10 * time.Second

// finishClosing waits, at most closeGrace, for every rock to finish closing.
func finishClosing(tr *rockTracker, g *globalOpts) {
	if n := tr.wait(closeGrace); n > 0 {
		g.logger.Warn("exiting with rocks still closing: their peers may not get their last bytes", "rocks", n)
	}
}

// checkReachable dials addr once so that a wrong address is reported at start, not at
// the first client.
func checkReachable(ctx context.Context, flag, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("%s %s is not reachable: %w", flag, addr, err)
	}
	return c.Close()
}

func newServeCmd(g *globalOpts) *cobra.Command {
	var (
		o          rockOpts
		reg        registerOpts
		listen, to string
		noAuth     bool
		statePath  string
	)
	c := &cobra.Command{
		Use:   "serve",
		Short: "Accept rocks and join each to a TCP connection to a local service (the paper's rockd)",
		Long: `serve listens for rocks on --listen (TCP, and UDP on the same port for the control
channel) and joins each one to a new TCP connection to --to, so that an unmodified
service gets connections that survive its clients' moves. Ordinary (unenhanced) clients
are joined too, as plain TCP.

A forwarder anyone can use is an open door to --to: serve refuses to start without
--psk-file (make one with rockudp keygen; give the same file to connect) unless
--no-auth says you mean it. With a key, clients without it never get a rock nor reach
--to: they must also be enhanced.

With --register NAME, serve keeps NAME in the DNS (RFC 2136 updates signed with the TSIG
key, at --locator-server) pointing at its listening address, follows the host's address
changes, removes the records at exit, and announces NAME to its clients: "connect
--locate" then finds this server after it moved.

With --state-dir DIR, a SIGTERM or SIGINT does not close the rocks: serve suspends them
without telling their clients, writes each one's state to DIR (keys, byte counts and the
bytes the client has not yet acknowledged; mode 0600, DIR 0700), and exits. The next serve
started with the same DIR (same --listen port, same key) imports them and joins each to a
new connection to --to; the clients reconnect and resume with no byte lost or repeated on
the rock. What is preserved is the stream between each client and serve. The TCP
connection to --to is not: the service sees it end (what serve had already read from the
client was delivered to it first) and a new connection begin, and bytes the service had
sent that serve had not yet passed to the rock are lost. So it suits services for which a
new connection continues the conversation (a sink, a stateless request stream), or any
service when what matters is that clients keep their connections. DIR also keeps the
listener's EDP announcement, so clients' cached probes stay valid across restarts.`,
		Example: "  rockudp serve --listen :7000 --to 127.0.0.1:22 --psk-file rockudp.psk",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.pskFile == "" && !noAuth {
				return errors.New("refusing to run an open forwarder: give --psk-file (rockudp keygen makes one) or --no-auth")
			}
			if to == "" {
				return errors.New("--to HOST:PORT is required: the service to forward to")
			}
			tr := newRockTracker()
			cfg, err := o.config(g.logger, tr)
			if err != nil {
				return err
			}
			name, err := reg.canonicalName()
			if err != nil {
				return err
			}
			cfg.Name = strings.TrimSuffix(name, ".") // announced to clients, for their --locate
			var state *stateDir
			if statePath != "" {
				if state, err = openStateDir(statePath, cfg, g.logger); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			if err := checkReachable(ctx, "--to", to); err != nil {
				return err
			}
			stopMetrics, err := o.startMetrics(ctx, tr, g.logger)
			if err != nil {
				return err
			}
			defer stopMetrics()
			ln, err := tcprocks.Listen("tcp", listen, cfg)
			if err != nil {
				return fmt.Errorf("cannot listen on %s: %w", listen, err)
			}
			stopRegistrar, err := reg.start(ctx, ln.Addr(), g.logger)
			if err != nil {
				ln.Close()
				return err
			}
			defer stopRegistrar()
			auth := "pre-shared key"
			if o.pskFile == "" {
				auth = "NO authentication"
			}
			if name != "" {
				auth += fmt.Sprintf(", registered as %s at %s", name, reg.server)
			}
			var (
				imported []*tcprocks.Conn
				handOff  func()
			)
			if state != nil {
				imported = state.restore(ln, tr, g.logger)
				auth += fmt.Sprintf(", state in %s (%d rocks imported)", statePath, len(imported))
				handOff = func() { state.save(tr.conns(), g.logger) }
			}
			fmt.Fprintf(cmd.OutOrStdout(), "serving rocks on %s (tcp + udp), forwarding to %s, %s\n", ln.Addr(), to, auth)
			defer startStatusFor(tr, "serve", fmt.Sprintf("%s -> %s", ln.Addr(), to), g.logger)()
			stop := context.AfterFunc(ctx, func() { ln.Close() })
			defer stop()
			err = serveRocks(ctx, ln, to, tr, g.logger, imported, handOff)
			finishClosing(tr, g)
			return err
		},
	}
	o.add(c)
	reg.add(c)
	c.Flags().StringVar(&listen, "listen", ":7000", "address to accept rocks on")
	c.Flags().StringVar(&to, "to", "", "service to join each rock to (HOST:PORT, required)")
	c.Flags().BoolVar(&noAuth, "no-auth", false, "run without a pre-shared key: anyone who reaches --listen reaches --to")
	c.Flags().StringVar(&statePath, "state-dir", "", "on SIGTERM or SIGINT, hand the rocks off to files in this directory (mode 0700) for the next serve with it, instead of closing them")
	c.MarkFlagsMutuallyExclusive("psk-file", "no-auth")
	return c
}

func newConnectCmd(g *globalOpts) *cobra.Command {
	var (
		o              rockOpts
		loc            locateOpts
		server, listen string
		stdio          bool
	)
	c := &cobra.Command{
		Use:   "connect",
		Short: "Carry local TCP connections (or stdin/stdout) over rocks to a rockudp server",
		Long: `connect dials rocks to a "rockudp serve" at --server. With --listen it accepts local TCP
connections and carries each over its own rock; with --stdio it carries its standard input
and output over one rock, for ssh's ProxyCommand:

  ssh -o ProxyCommand='rockudp connect --stdio --server %h:7000 --psk-file ~/.rockudp.psk' host

With --locate, a rock whose server no longer answers at its last address looks up the
name the server announced (serve --register) in the DNS at --locator-server and tries the
addresses found there; --locate NAME looks up NAME instead. The answer is a hint: the rock
still authenticates whatever it reaches.`,
		Example: "  rockudp connect --server host:7000 --listen 127.0.0.1:2222 --psk-file rockudp.psk",
		Args:    loc.args,
		RunE: func(cmd *cobra.Command, args []string) error {
			if server == "" {
				return errors.New("--server HOST:PORT is required: the rockudp serve to connect to")
			}
			if (listen == "") == !stdio {
				return errors.New("give exactly one of --listen ADDR and --stdio")
			}
			tr := newRockTracker()
			cfg, err := o.config(g.logger, tr)
			if err != nil {
				return err
			}
			if cfg.Locator, err = loc.locator(server, g.logger); err != nil {
				return err
			}
			cc, err := control.NewClient(&control.ClientConfig{Logger: g.logger})
			if err != nil {
				return err
			}
			defer cc.Close()
			cfg.ControlClient = cc
			ctx := cmd.Context()
			stopMetrics, err := o.startMetrics(ctx, tr, g.logger)
			if err != nil {
				return err
			}
			defer stopMetrics()
			if stdio {
				defer startStatusFor(tr, "connect", "stdio -> "+server, g.logger)()
				err := connectStdio(ctx, cmd.InOrStdin(), cmd.OutOrStdout(), server, cfg, tr)
				finishClosing(tr, g)
				return err
			}
			if err := checkReachable(ctx, "--server", server); err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("cannot listen on %s: %w", listen, err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "carrying connections to %s over rocks to %s\n", ln.Addr(), server)
			defer startStatusFor(tr, "connect", fmt.Sprintf("%s -> %s", ln.Addr(), server), g.logger)()
			stop := context.AfterFunc(ctx, func() { ln.Close() })
			defer stop()
			err = connectRocks(ctx, ln, server, cfg, tr, g.logger)
			finishClosing(tr, g)
			return err
		},
	}
	o.add(c)
	loc.add(c)
	c.Flags().StringVar(&server, "server", "", "rockudp serve to connect to (HOST:PORT, required)")
	c.Flags().StringVar(&listen, "listen", "", "accept local TCP connections on this address")
	c.Flags().BoolVar(&stdio, "stdio", false, "carry standard input and output over one rock")
	c.MarkFlagsMutuallyExclusive("listen", "stdio")
	return c
}

// connectStdio carries in/out over one rock to server until both directions end.
func connectStdio(ctx context.Context, in io.Reader, out io.Writer, server string, cfg *tcprocks.Config, tr *rockTracker) error {
	rock, err := tcprocks.Dial(ctx, "tcp", server, cfg)
	if err != nil {
		return fmt.Errorf("cannot connect to %s: %w", server, err)
	}
	tr.add(rock)
	stop := context.AfterFunc(ctx, func() { rock.Close() })
	defer stop()
	_, err = forward.Join(&stdioConn{in: in, out: out}, rock)
	return err
}

// stdioConn is standard input and output as a net.Conn for forward.Join: CloseWrite
// closes the output (when it can be closed), Close ends both.
type stdioConn struct {
	in  io.Reader
	out io.Writer
}

func (s *stdioConn) Read(b []byte) (int, error)  { return s.in.Read(b) }
func (s *stdioConn) Write(b []byte) (int, error) { return s.out.Write(b) }
func (s *stdioConn) CloseWrite() error {
	if c, ok := s.out.(io.Closer); ok && s.out != os.Stderr {
		return c.Close()
	}
	return nil
}
func (s *stdioConn) Close() error {
	if c, ok := s.in.(io.Closer); ok {
		c.Close()
	}
	return s.CloseWrite()
}
func (s *stdioConn) LocalAddr() net.Addr                { return stdioAddr{} }
func (s *stdioConn) RemoteAddr() net.Addr               { return stdioAddr{} }
func (s *stdioConn) SetDeadline(t time.Time) error      { return nil }
func (s *stdioConn) SetReadDeadline(t time.Time) error  { return nil }
func (s *stdioConn) SetWriteDeadline(t time.Time) error { return nil }

type stdioAddr struct{}

func (stdioAddr) Network() string { return "stdio" }
func (stdioAddr) String() string  { return "stdio" }
