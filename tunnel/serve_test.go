package tunnel

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/control"
	"github.com/rockudp/rockudp/tcprocks"
)

// TestServe runs several tunnels through one Acceptor; a connection that
// sends garbage ends alone, and the others keep working.
func TestServe(t *testing.T) {
	for _, tr := range []transport{overTCP, overRock} {
		t.Run(string(tr), func(t *testing.T) {
			svc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); serve(svc, false, nil) }()
			defer func() { svc.Close(); wg.Wait() }()

			var l net.Listener
			dial := func() net.Conn {
				c, err := net.Dial("tcp", l.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			// Rocks finish in the background after Close: count them out.
			srvEv, cliEv := &eventCounter{}, &eventCounter{}
			if tr == overRock {
				rl, err := tcprocks.Listen("tcp", "127.0.0.1:0", &tcprocks.Config{Handler: srvEv})
				if err != nil {
					t.Fatal(err)
				}
				l = rl
				cc, err := control.NewClient(nil)
				if err != nil {
					t.Fatal(err)
				}
				defer cc.Close()
				cfg := &tcprocks.Config{ControlClient: cc, ProbeCache: edp.NewCache(time.Minute), RequireEnhanced: true, Handler: cliEv}
				dial = func() net.Conn {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					c, err := tcprocks.Dial(ctx, "tcp", l.Addr().String(), cfg)
					if err != nil {
						t.Fatal(err)
					}
					return c
				}
			} else if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
				t.Fatal(err)
			}
			lb := &logBuffer{}
			a, err := Serve(l, svc.LocalAddr().String(), withLogger(nil, lb))
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()

			var clients []*Client
			var srcs []*net.UDPConn
			for range 2 {
				uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Fatal(err)
				}
				c, err := NewClient(dial(), uc, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				clients = append(clients, c)
				srcs = append(srcs, source(t, "udp4"))
			}
			for i, c := range clients {
				roundTrip(t, srcs[i], c.LocalAddr(), []byte("before"))
			}
			waitFor(t, "two tunnels", func() bool { return a.Tunnels() == 2 })

			bad := dial()
			defer bad.Close()
			if _, err := bad.Write(AppendHeader(AppendHello(nil, Hello{Version: Version}), 77, 1, 0, 0)); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the bad tunnel to end", func() bool {
				return a.Tunnels() == 2 && strings.Contains(lb.String(), "malformed frame")
			})
			for i, c := range clients {
				if got := roundTrip(t, srcs[i], c.LocalAddr(), []byte("after")); string(got) != "after" {
					t.Fatalf("client %d: %q", i, got)
				}
			}
			// A reply can reach its source before either sender has counted it.
			waitFor(t, "the counters", func() bool {
				var out uint64
				for _, c := range clients {
					out += c.Stats().DatagramsOut
				}
				return out == 4 && a.Stats().DatagramsOut == 4
			})
			if st := a.Stats(); st.DatagramsOut != 4 || st.DatagramsIn != 4 || st.Flows != 2 {
				t.Fatalf("acceptor stats: %+v", st)
			}
			for _, c := range clients {
				c.Close()
			}
			bad.Close()
			waitFor(t, "the tunnels to end", func() bool { return a.Tunnels() == 0 })
			if tr == overRock {
				waitFor(t, "the rocks to finish", func() bool { // two clients and the bad one
					return srvEv.count(callbacks.Closed) == 3 && cliEv.count(callbacks.Closed) == 3
				})
			}
			if st := a.Stats(); st.DatagramsOut != 4 || st.FlowsClosed != 2 {
				t.Fatalf("stats of ended tunnels: %+v", st)
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			<-a.Done()
			if a.Err() == nil {
				t.Fatal("Err() nil after Close")
			}
		})
	}
}
