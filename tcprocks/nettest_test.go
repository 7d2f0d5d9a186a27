package tcprocks

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/nettest"
)

// makePipe returns a nettest.MakePipe that dials rock pairs through addr. Dials are retried:
// with faults injected, a probe or handshake can be cut too (the suite is about what happens
// after the connection is set up).
func makePipe(t *testing.T, l *Listener, addr string, cli *Config) nettest.MakePipe {
	cfg := *cli
	cfg.RequireEnhanced = true
	return func() (c1, c2 net.Conn, stop func(), err error) {
		c, err := dialRetry(&cfg, addr)
		if err != nil {
			return nil, nil, nil, err
		}
		s, err := acceptID(l, c.ID())
		if err != nil {
			c.Close()
			return nil, nil, nil, err
		}
		stop = func() {
			c.Close()
			s.Close()
			waitDone(t, c)
			waitDone(t, s)
		}
		return c, s, stop, nil
	}
}

func dialRetry(cfg *Config, addr string) (*Conn, error) {
	var err error
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var c *Conn
		c, err = Dial(ctx, "tcp", addr, cfg)
		cancel()
		if err == nil {
			return c, nil
		}
	}
	return nil, err
}

// acceptID accepts until it gets the rock with the given ID; others (left over from dials
// that failed) are closed.
func acceptID(l *Listener, id [16]byte) (*Conn, error) {
	deadline := time.After(30 * time.Second)
	type res struct {
		c   *Conn
		err error
	}
	for {
		ch := make(chan res, 1)
		go func() {
			s, err := l.AcceptConn()
			ch <- res{s, err}
		}()
		select {
		case r := <-ch:
			if r.err != nil {
				return nil, r.err
			}
			if r.c.Enhanced() && r.c.ID() == id {
				return r.c, nil
			}
			r.c.Close()
		case <-deadline:
			return nil, errors.New("no rock with the dialed ID accepted")
		}
	}
}

func TestNetConn(t *testing.T) {
	srvCfg, cliCfg := testConfigs(t)
	l := listen(t, srvCfg)
	nettest.TestConn(t, makePipe(t, l, l.Addr().String(), cliCfg))
}

// TestNetConnWithCuts runs the conformance suite while the data connections are cut and
// reset in the background: with the default backoff, and with attempts every 20 ms, which
// makes resumptions (and the close exchanges they carry) race with the cuts far more often.
func TestNetConnWithCuts(t *testing.T) {
	t.Run("default backoff", func(t *testing.T) { netConnWithCuts(t, 0) })
	t.Run("fast retry", func(t *testing.T) { netConnWithCuts(t, 20*time.Millisecond) })
}

func netConnWithCuts(t *testing.T, backoffMax time.Duration) {
	srvCfg, cliCfg := relayConfigs(t)
	if backoffMax > 0 {
		cliCfg.Policy.BackoffMax = backoffMax
		srvCfg.MaxResumeRate = 1000
	}
	resumed := countResumed(cliCfg)
	l := listen(t, srvCfg)
	r := newRelay(t, l)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if i%2 == 0 {
				r.Cut()
			} else {
				r.Reset()
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	nettest.TestConn(t, makePipe(t, l, r.Addr().String(), cliCfg))
	t.Logf("%d resumptions", resumed.Load())
	if resumed.Load() == 0 {
		t.Error("no data connection was cut during the suite")
	}
}
