package locator

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/control"
	"github.com/rockudp/rockudp/internal/relay"
	"github.com/rockudp/rockudp/tcprocks"
)

// recordingLocator remembers the queries a rock made.
type recordingLocator struct {
	inner callbacks.Locator
	mu    sync.Mutex
	qs    []callbacks.Query
}

func (r *recordingLocator) Locate(ctx context.Context, q callbacks.Query) ([]string, error) {
	r.mu.Lock()
	r.qs = append(r.qs, q)
	r.mu.Unlock()
	return r.inner.Locate(ctx, q)
}

func (r *recordingLocator) queries() []callbacks.Query {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]callbacks.Query(nil), r.qs...)
}

// TestRockFindsAnnouncedName runs a rock whose client knows only the DNS server: it reaches
// the server through a relay (the server's "old address"), the server announces its name,
// the relay starts refusing, and the suspended rock finds the server's registered address by
// the announced name and resumes there with every byte.
func TestRockFindsAnnouncedName(t *testing.T) {
	key := testKey(t, "rock-key")
	s := startServer(t, key, nil)
	cfg := clientConfig(s.Addr(), &key)
	ctx := ctxT(t)
	const name = "srv.rock.test"

	closed := make(chan struct{}, 2) // both ends' Closed events
	onClosed := callbacks.HandlerFunc(func(e callbacks.Event) {
		if e.Kind == callbacks.Closed {
			closed <- struct{}{}
		}
	})
	l, err := tcprocks.Listen("tcp", "127.0.0.1:0", &tcprocks.Config{Name: name, Handler: onClosed})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	if err := Register(ctx, cfg, name, uint16(port), []netip.Addr{netip.MustParseAddr("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(l.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cc, err := control.NewClient(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	loc := &recordingLocator{inner: NewLocator(&Config{Server: s.Addr().String(), Timeout: 5 * time.Second})}
	resumed := make(chan callbacks.Event, 4)
	handler := callbacks.HandlerFunc(func(e callbacks.Event) {
		if e.Kind == callbacks.Resumed {
			select {
			case resumed <- e:
			default:
			}
		}
		onClosed(e)
	})
	cli, err := tcprocks.Dial(ctx, "tcp", r.Addr().String(), &tcprocks.Config{Locator: loc, Handler: handler,
		RequireEnhanced: true, ControlClient: cc, ProbeCache: edp.NewCache(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := l.AcceptConn()
	if err != nil {
		cli.Close()
		t.Fatal(err)
	}
	defer func() { // a graceful close at both ends, waited for: no goroutine outlives the test
		cli.Close()
		srv.Close()
		for range 2 {
			select {
			case <-closed:
			case <-time.After(patience):
				t.Error("rocks not closed")
				return
			}
		}
	}()
	if got := cli.PeerName(); got != name {
		t.Fatalf("PeerName = %q, want %q", got, name)
	}
	exchange := func(msg string) {
		t.Helper()
		if _, err := cli.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != msg {
			t.Fatalf("read %q, %v; want %q", buf, err, msg)
		}
	}
	exchange("before the move")

	// The old address dies: its connections are reset and new ones refused.
	r.Refuse(true)
	r.Reset()
	exchange("written while the server was being looked up")
	select {
	case e := <-resumed:
		if e.Remote.String() != l.Addr().String() {
			t.Fatalf("resumed with %v, want the registered %v", e.Remote, l.Addr())
		}
	case <-time.After(patience):
		t.Fatal("no resumption")
	}
	qs := loc.queries()
	if len(qs) == 0 || qs[0].Name != name {
		t.Fatalf("locator queries %+v, want Name %q", qs, name)
	}
	exchange("after")
}
