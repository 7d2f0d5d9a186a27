package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"

	"github.com/rockudp/rockudp/internal/forward"
	"github.com/rockudp/rockudp/tcprocks"
)

// serveRocks is the paper's rockd: it accepts rocks (and, when ln takes them — no
// pre-shared key —, plain TCP from ordinary clients) on ln and joins each, and each rock of imported, to a new TCP
// connection to the service at to. It returns when ln is closed, after every joined pair
// has ended. When ctx ends, every pair is closed — after handOff, when it is not nil, has
// taken the rocks it wants (Conn.Export), whose clients then see no close.
func serveRocks(ctx context.Context, ln *tcprocks.Listener, to string, tr *rockTracker, log *slog.Logger,
	imported []*tcprocks.Conn, handOff func()) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	pairs, closePairs := context.WithCancel(context.Background())
	defer closePairs()
	handedOff := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(handedOff)
		if handOff != nil {
			handOff()
		}
		closePairs()
	})
	defer func() {
		if !stop() {
			<-handedOff // the rocks' states are written before we return
		}
	}()
	join := func(c *tcprocks.Conn) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var d net.Dialer
			up, err := d.DialContext(ctx, "tcp", to)
			if err != nil {
				log.Warn("cannot reach the service; closing the client's connection", "service", to, "err", err)
				c.Close()
				return
			}
			stop := context.AfterFunc(pairs, func() { c.Close(); up.Close() })
			defer stop()
			n, err := forward.Join(c, up)
			if tr != nil {
				tr.m.forwarded(n.BToA, n.AToB)
			}
			log.Debug("connection ended", "client", c.RemoteAddr(), "enhanced", c.Enhanced(),
				"bytes_in", n.AToB, "bytes_out", n.BToA, "err", err)
		}()
	}
	for _, c := range imported {
		join(c)
	}
	rl := &trackedListener{Listener: ln, tr: tr}
	for {
		c, err := rl.AcceptRock()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return err
		}
		join(c)
	}
}

// connectRocks accepts local TCP connections on local and carries each over its own
// rock to server. It returns when local is closed, after every joined pair has ended;
// when ctx ends, every pair is closed.
func connectRocks(ctx context.Context, local net.Listener, server string, cfg *tcprocks.Config, tr *rockTracker, log *slog.Logger) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := local.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rock, err := tcprocks.Dial(ctx, "tcp", server, cfg)
			if err != nil {
				log.Warn("cannot reach the rockudp server; closing the local connection", "server", server, "err", err)
				c.Close()
				return
			}
			if tr != nil {
				tr.add(rock)
			}
			stop := context.AfterFunc(ctx, func() { c.Close(); rock.Close() })
			defer stop()
			n, err := forward.Join(c, rock)
			if tr != nil {
				tr.m.forwarded(n.AToB, n.BToA)
			}
			log.Debug("connection ended", "local", c.RemoteAddr(), "enhanced", rock.Enhanced(),
				"bytes_out", n.AToB, "bytes_in", n.BToA, "err", err)
		}()
	}
}

// trackedListener records every connection it accepts in tr. (A listener with a pre-shared
// key turns ordinary TCP clients away itself: tcprocks refuses them, as they have proven
// nothing.)
type trackedListener struct {
	*tcprocks.Listener
	tr *rockTracker // nil: no tracking
}

// AcceptRock returns the next accepted connection.
func (l *trackedListener) AcceptRock() (*tcprocks.Conn, error) {
	c, err := l.AcceptConn()
	if err != nil {
		return nil, err
	}
	if l.tr != nil {
		l.tr.add(c)
	}
	return c, nil
}

// Accept is AcceptRock for users of net.Listener (tunnel.Serve).
func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.AcceptRock()
	if err != nil {
		return nil, err
	}
	return c, nil
}
