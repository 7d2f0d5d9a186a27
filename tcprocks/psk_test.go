package tcprocks

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// logRecorder is a slog.Handler that keeps every record's message and attributes.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Level.String() + " " + rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, b.String())
	r.mu.Unlock()
	return nil
}

// find returns the first line containing every one of words.
func (r *logRecorder) find(words ...string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
outer:
	for _, l := range r.lines {
		for _, w := range words {
			if !strings.Contains(l, w) {
				continue outer
			}
		}
		return l
	}
	return ""
}

// noAccept checks that l has no connection waiting for Accept and keeps no rock.
func noAccept(t *testing.T, l *Listener) {
	t.Helper()
	select {
	case c := <-l.queue:
		t.Fatalf("the listener queued a connection (enhanced %v)", c.Enhanced())
	default:
	}
	if n := len(l.Conns()); n != 0 {
		t.Fatalf("the listener keeps %d rocks", n)
	}
}

func TestPSK(t *testing.T) {
	keyA, keyB := []byte("0123456789abcdef-key-A"), []byte("0123456789abcdef-key-B")
	for _, tc := range []struct {
		name     string
		srv, cli []byte
		srvLog   string // what the server's warning says
	}{
		{"different keys", keyA, keyB, "client's key confirmation is wrong"},
		{"client without key", keyA, nil, "the client has none"},
		{"server without key", nil, keyA, "the client has one, this end has none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srvCfg, cliCfg := testConfigs(t)
			rec := &logRecorder{}
			srvCfg.Logger = slog.New(rec)
			srvCfg.PSK, cliCfg.PSK = tc.srv, tc.cli
			l := listen(t, srvCfg)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := Dial(ctx, "tcp", l.Addr().String(), cliCfg)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if !errors.Is(err, ErrPSKMismatch) || !errors.Is(err, ErrAuth) {
				t.Fatalf("Dial error %v, want ErrPSKMismatch", err)
			}
			t.Logf("client: %v", err)
			waitFor(t, "the server's warning", func() bool { return rec.find("WARN", "pre-shared key", tc.srvLog) != "" })
			t.Logf("server: %s", rec.find("WARN", "pre-shared key"))
			noAccept(t, l)
		})
	}
	t.Run("same key", func(t *testing.T) {
		srvCfg, cliCfg := testConfigs(t)
		srvCfg.PSK, cliCfg.PSK = keyA, append([]byte(nil), keyA...)
		l := listen(t, srvCfg)
		c, s := pair(t, l, l.Addr().String(), cliCfg)
		echo(t, c, s, []byte("with a key"))
		c.Suspend()
		waitFor(t, "resumption", func() bool { return c.Stats().Suspensions == 1 && c.State() == Connected })
		echo(t, c, s, []byte("after resuming"))
	})
	t.Run("ordinary client", func(t *testing.T) {
		// A listener with a key never hands out plain TCP.
		srvCfg, _ := testConfigs(t)
		srvCfg.PSK = keyA
		srvCfg.EDP.FirstByteWait = 50 * time.Millisecond
		l := listen(t, srvCfg)
		nc, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		nc.SetReadDeadline(time.Now().Add(20 * time.Second))
		if n, err := nc.Read(make([]byte, 16)); err == nil || errors.Is(err, errDeadline) {
			t.Fatalf("the server kept an ordinary client: read %d, %v", n, err)
		} else if err != io.EOF {
			t.Logf("ordinary client: %v", err)
		}
		noAccept(t, l)
	})
}
