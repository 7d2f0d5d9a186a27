package bench

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/rockudp/rockudp/test/netlab"
)

// labTB adapts package netlab, written for tests, to a program: netlab needs a testing.TB
// only to log, to fail (here: to abort the lab function with an error) and to register its
// clean-up (here: run when the lab function returns). The embedded nil interface supplies
// the unexported method; netlab calls only the methods overridden below.
type labTB struct {
	testing.TB
	log      *slog.Logger
	cleanups []func()
	failed   bool
}

// labAbort is the panic value of Fatalf and Skipf, recovered by withLab.
type labAbort struct{ msg string }

func (t *labTB) Helper()                         {}
func (t *labTB) Name() string                    { return "rockudp-bench" }
func (t *labTB) Cleanup(f func())                { t.cleanups = append(t.cleanups, f) }
func (t *labTB) Logf(format string, args ...any) { t.log.Debug(fmt.Sprintf(format, args...)) }
func (t *labTB) Errorf(format string, args ...any) {
	t.failed = true
	t.log.Warn(fmt.Sprintf(format, args...))
}
func (t *labTB) Fatalf(format string, args ...any) { panic(labAbort{fmt.Sprintf(format, args...)}) }
func (t *labTB) Fatal(args ...any)                 { panic(labAbort{fmt.Sprint(args...)}) }
func (t *labTB) Skipf(format string, args ...any)  { panic(labAbort{fmt.Sprintf(format, args...)}) }
func (t *labTB) Failed() bool                      { return t.failed }
func (t *labTB) Skipped() bool                     { return false }

// labNet is the lab every root measurement uses: client — router — server, with the
// client's link shaped.
type labNet struct {
	lab            *netlab.Lab
	client, server *netlab.Host
	link           *netlab.Link // the client's link, the one that is shaped and fails
	serverIP       netip.Addr
}

// withLab builds the lab, runs fn and removes the lab, also when fn or netlab fails.
func withLab(log *slog.Logger, fn func(*labNet) error) (err error) {
	tb := &labTB{log: log}
	defer func() {
		if v := recover(); v != nil {
			a, ok := v.(labAbort)
			if !ok {
				panic(v)
			}
			err = errors.Join(err, errors.New(a.msg))
		}
		for i := len(tb.cleanups) - 1; i >= 0; i-- {
			tb.cleanups[i]()
		}
	}()
	lab := netlab.New(tb)
	r := lab.Router("r")
	client, server := lab.Host("client"), lab.Host("server")
	link := lab.Connect(client, r, netip.MustParsePrefix("192.0.2.0/24"))
	sl := lab.Connect(server, r, netip.MustParsePrefix("198.51.100.0/24"))
	return fn(&labNet{lab: lab, client: client, server: server, link: link, serverIP: sl.Addr()})
}

// shape gives the client's link the profile's rate, delay and loss.
func (l *labNet) shape(p linkProfile) error {
	return errors.Join(l.link.SetRate(p.rate), l.link.SetDelay(p.rtt/2), l.link.SetLoss(p.loss))
}

func (l *labNet) ends() ends {
	return ends{server: l.server.Do, client: l.client.Do, listenIP: l.serverIP.String()}
}
