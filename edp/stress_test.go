package edp

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// TestManyMixedClients runs 1000 concurrent clients against one listener: probes,
// enhanced clients, ordinary clients that speak first, and silent clients that hold
// their connection without a byte. The silent ones connect first and stay pending
// until every other client is done, which shows Accept never waits behind them.
//
// FirstByteWait is an hour here: with 1000 goroutines on a loaded 2-core machine under
// -race, a client's first write can trail its connect by far more than the default
// 100ms floor, and this test is about concurrency and classification, not the timer
// (TestServerSpeaksFirst covers that). The silent clients are released by writing.
func TestManyMixedClients(t *testing.T) {
	const (
		silent   = 200
		probes   = 250
		enhanced = 250
		ordinary = 300
	)
	rocks := Enhancement{Name: "rocks", Version: 1}
	srv := startApp(t, &Config{Enhancements: []Enhancement{rocks}, FirstByteWait: never, ClassifyTimeout: time.Minute},
		func(c *Conn) {
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			kind := byte('O')
			if c.Result().Enhanced {
				kind = 'E'
				if len(c.Result().Agreed) != 1 {
					kind = '?'
				}
			} else if c.Result().Reason != ReasonData {
				kind = '?'
			}
			msg := make([]byte, 8)
			if _, err := io.ReadFull(c, msg); err != nil {
				return
			}
			c.Write(append([]byte{kind}, msg...))
		})
	addr := srv.addr()
	ctx := testCtx(t)
	expect := func(c net.Conn, kind byte, i int) error {
		c.SetDeadline(time.Now().Add(time.Minute))
		msg := fmt.Sprintf("%c%07d", kind, i)
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		got := make([]byte, 9)
		if _, err := io.ReadFull(c, got); err != nil {
			return err
		}
		if want := string(kind) + msg; string(got) != want {
			return fmt.Errorf("got %q, want %q", got, want)
		}
		return nil
	}

	// The silent clients connect and say nothing.
	silentConns := make([]net.Conn, silent)
	for i := range silentConns {
		silentConns[i] = dialRaw(t, addr)
	}
	waitFor(t, "the silent clients to be pending", func() bool { return srv.l.Stats().Pending == silent })

	errs := make(chan error, probes+enhanced+ordinary)
	var wg sync.WaitGroup
	cfg := &Config{Enhancements: []Enhancement{rocks}, Announcement: srv.l.Announcement(),
		HandshakeTimeout: time.Minute, ProbeTimeoutMin: time.Minute, ProbeTimeoutMax: time.Minute}
	for i := range probes + enhanced + ordinary {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			switch {
			case i < probes:
				var r Result
				if r, err = Probe(ctx, "tcp", addr, cfg); err == nil && !r.Enhanced {
					err = fmt.Errorf("probe: %+v", r)
				}
			case i < probes+enhanced:
				var c *Conn
				if c, err = Dial(ctx, "tcp", addr, cfg); err == nil {
					if !c.Result().Enhanced {
						err = fmt.Errorf("dial: %+v", c.Result())
					} else {
						err = expect(c, 'E', i)
					}
					c.Close()
				}
			default:
				var c net.Conn
				if c, err = net.Dial("tcp", addr); err == nil {
					err = expect(c, 'O', i)
					c.Close()
				}
			}
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s := srv.l.Stats(); s.Probes != probes || s.Enhanced != enhanced || s.Ordinary != ordinary || s.Failed != 0 {
		t.Errorf("with the silent clients still pending: %+v", s)
	}

	// Now the silent clients speak; each is an ordinary connection.
	for i, c := range silentConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := expect(c, 'O', i); err != nil {
				t.Errorf("silent client %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	waitFor(t, "no pending connections", func() bool { return srv.l.Stats().Pending == 0 })
	if s := srv.l.Stats(); s.Ordinary != ordinary+silent {
		t.Errorf("at the end: %+v", s)
	}
}
