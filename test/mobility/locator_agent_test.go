//go:build linux

package mobility

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/rockudp/rockudp/locator"
	"github.com/rockudp/rockudp/tcprocks"
)

// Roles of the locator agents: the agent of agent_test.go, with a locator. The server
// keeps its DNS name current with a locator.Registrar (which follows the namespace's
// addresses) and announces the name to its clients; the client's rock asks a
// locator.Locator, with no name configured, when the server's last known address fails.
// Their extra lines: "registered" (server; Local lists the registered addresses, Err the
// failure of an attempt).
const (
	roleLocatorServer = "locator-server"
	roleLocatorClient = "locator-client"
	evRegistered      = "registered"
)

// The locator agents are dispatched here, before TestMain (whose dispatch knows only the
// roles of agent_test.go): an init function of the re-executed test binary.
func init() {
	if role := os.Getenv(agentEnv); role == roleLocatorServer || role == roleLocatorClient {
		os.Exit(runLocatorAgent(role, os.Args[1:]))
	}
}

// runLocatorAgent runs a locator agent with its command-line arguments and returns the exit
// status.
func runLocatorAgent(role string, args []string) int {
	fs := flag.NewFlagSet("locator-agent", flag.ContinueOnError)
	addr := fs.String("addr", "", "server: address to listen on; client: address to dial")
	rate := fs.Int("rate", 512<<10, "bytes per second to send")
	dns := fs.String("dns", "", "DNS server (HOST:PORT): server: takes the updates; client: answers lookups")
	zone := fs.String("zone", "", "server: the zone of -name")
	key := fs.String("key", "", "server: TSIG key, NAME:BASE64")
	name := fs.String("name", "", "server: the name to register and announce")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	a := &agent{out: json.NewEncoder(os.Stdout), stop: make(chan struct{}), eof: make(chan struct{}), closed: make(chan struct{})}
	lc := &locator.Config{Server: *dns, Zone: *zone, Timeout: time.Second}
	var err error
	if role == roleLocatorServer {
		err = a.runLocatorServer(*addr, *rate, lc, *key, *name)
	} else {
		err = a.runLocatorClient(*addr, *rate, lc)
	}
	if err != nil {
		a.print(line{Ev: evError, Err: err.Error()})
		return 1
	}
	return 0
}

// runLocatorServer registers name at the DNS server and serves one rock on addr.
func (a *agent) runLocatorServer(addr string, rate int, lc *locator.Config, key, name string) error {
	kname, secret, ok := strings.Cut(key, ":")
	if !ok {
		return fmt.Errorf("agent: -key %q: want NAME:BASE64", key)
	}
	lc.Key = &locator.Key{Name: kname, Secret: secret}
	l, err := tcprocks.Listen("tcp", addr, &tcprocks.Config{Handler: a, Name: name})
	if err != nil {
		return err
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	p, _ := strconv.Atoi(port)
	reg, err := locator.NewRegistrar(lc, locator.Registration{Name: name, Port: uint16(p), OnUpdate: func(s locator.RegistrarStatus) {
		l := line{Ev: evRegistered, Local: fmt.Sprint(s.Addrs)}
		if s.Err != nil {
			l.Err = s.Err.Error()
		}
		a.print(l)
	}})
	if err != nil {
		return err
	}
	defer reg.Close()
	a.print(line{Ev: evListening, Local: l.Addr().String()})
	c, err := l.AcceptConn()
	if err != nil {
		return err
	}
	if !c.Enhanced() {
		c.Close()
		return errors.New("agent: the client does not speak rocks")
	}
	return a.stream(c, seedServerToClient, seedClientToServer, rate, true)
}

// runLocatorClient dials addr with a Locator that knows only the DNS server: the name to
// look up is the one the server announced.
func (a *agent) runLocatorClient(addr string, rate int, lc *locator.Config) error {
	cfg := &tcprocks.Config{Handler: a, RequireEnhanced: true, Locator: locator.NewLocator(lc)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	c, err := tcprocks.Dial(ctx, "tcp", addr, cfg)
	cancel()
	if err != nil {
		return err
	}
	return a.stream(c, seedClientToServer, seedServerToClient, rate, false)
}
