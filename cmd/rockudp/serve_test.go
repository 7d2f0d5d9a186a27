package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rockudp/rockudp/internal/testwait"
)

// echoService is a TCP service that echoes every connection until EOF.
func echoService(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

// background runs the CLI with args until the test ends.
func background(t *testing.T, args ...string) *syncBuffer {
	t.Helper()
	out, _ := backgroundOut(t, args...)
	return out
}

// backgroundStop runs the CLI with args until stop is called or the test ends.
func backgroundStop(t *testing.T, args ...string) (stop func()) {
	t.Helper()
	_, stop = backgroundOut(t, args...)
	return stop
}

// backgroundOut runs the CLI with args until stop is called (as SIGINT would stop it)
// or the test ends; stop waits for it to return and reports its error.
func backgroundOut(t *testing.T, args ...string) (out *syncBuffer, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out = &syncBuffer{}
	root := newRootCmd(out, io.Discard)
	root.SetArgs(args)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%v: %v", args, err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("%v did not stop", args)
			}
		})
	}
	t.Cleanup(stop)
	return out, stop
}

// discardLogger is a silent logger.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// waitDial dials addr until it answers.
func waitDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	testwait.For(t, addr+" to answer", func() (err error) {
		c, err = net.Dial("tcp", addr)
		return err
	})
	return c
}

func writeKey(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "k.psk")
	if _, _, err := run(t, "keygen", "-o", p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestServeConnect: local client → connect --listen → rock → serve → echo service, with a key.
func TestServeConnect(t *testing.T) {
	svc := echoService(t)
	key := writeKey(t)
	srv, loc, met := freePort(t), freePort(t), freePort(t)
	background(t, "serve", "--listen", srv, "--to", svc, "--psk-file", key, "--metrics", met)
	waitDial(t, srv).Close()
	background(t, "connect", "--server", srv, "--listen", loc, "--psk-file", key)
	c := waitDial(t, loc)
	defer c.Close()
	msg := bytes.Repeat([]byte("through a rock "), 10000)
	go func() {
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %d bytes (err %v), want %d", len(got), err, len(msg))
	}
	// The server's metrics count the rock and, once the join ends, its bytes.
	want := fmt.Sprintf(`rockudp_forwarded_bytes_total{direction="from_rock"} %d`, len(msg))
	testwait.For(t, "the server's metrics", func() error {
		page := scrape(t, met)
		if strings.Contains(page, want) && strings.Contains(page, "rockudp_rocks_open") &&
			strings.Contains(page, "go_goroutines") {
			return nil
		}
		return fmt.Errorf("metrics lack %q:\n%s", want, page)
	})
}

// scrape fetches http://addr/metrics.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestServeRefusesWrongKey: a client with another key, and an ordinary TCP client, never
// reach the service.
func TestServeRefusesWrongKey(t *testing.T) {
	reached := make(chan struct{}, 10)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 1)
			if n, _ := c.Read(buf); n > 0 {
				reached <- struct{}{}
			}
			c.Close()
		}
	}()
	srv, loc := freePort(t), freePort(t)
	background(t, "serve", "--listen", srv, "--to", ln.Addr().String(), "--psk-file", writeKey(t))
	waitDial(t, srv).Close()
	background(t, "connect", "--server", srv, "--listen", loc, "--psk-file", writeKey(t)) // another key
	c := waitDial(t, loc)
	c.Write([]byte("let me in"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _ := c.Read(make([]byte, 10)); n > 0 {
		t.Fatal("a client with the wrong key got an answer")
	}
	c.Close()
	plain, err := net.Dial("tcp", srv) // an ordinary client, no rock at all
	if err != nil {
		t.Fatal(err)
	}
	plain.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	plain.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.ReadAll(plain)
	plain.Close()
	select {
	case <-reached:
		t.Fatal("the service received bytes from a client without the key")
	default:
	}
}

// TestConnectStdio carries stdin/stdout over one rock, as ssh's ProxyCommand does.
func TestConnectStdio(t *testing.T) {
	svc := echoService(t)
	srv := freePort(t)
	background(t, "serve", "--listen", srv, "--to", svc, "--no-auth")
	waitDial(t, srv).Close()
	var out bytes.Buffer
	root := newRootCmd(&out, io.Discard)
	root.SetIn(strings.NewReader("hello over stdio\n"))
	root.SetArgs([]string{"connect", "--server", srv, "--stdio"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello over stdio\n" {
		t.Fatalf("got %q", out.String())
	}
}

func TestServeConnectBadInput(t *testing.T) {
	svc := echoService(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	missing := filepath.Join(t.TempDir(), "none.psk")
	bad := filepath.Join(t.TempDir(), "bad.psk")
	os.WriteFile(bad, []byte("not a key\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--to", svc}, "refusing to run an open forwarder"},
		{[]string{"serve", "--no-auth"}, "--to HOST:PORT is required"},
		{[]string{"serve", "--no-auth", "--psk-file", bad, "--to", svc}, "none of the others can be"},
		{[]string{"serve", "--psk-file", missing, "--to", svc}, "pre-shared key"},
		{[]string{"serve", "--psk-file", bad, "--to", svc}, "not a base64 key"},
		{[]string{"serve", "--no-auth", "--to", "127.0.0.1:1"}, "--to 127.0.0.1:1 is not reachable"},
		{[]string{"serve", "--no-auth", "--to", svc, "--listen", busy.Addr().String()}, "cannot listen on"},
		{[]string{"serve", "--no-auth", "--to", svc, "--misses", "0"}, "must be positive"},
		{[]string{"serve", "--no-auth", "--to", svc, "--resume-timeout", "0s"}, "--resume-timeout must be positive"},
		{[]string{"serve", "--no-auth", "--to", svc, "--metrics", busy.Addr().String()}, "--metrics " + busy.Addr().String()},
		{[]string{"serve", "--no-auth", "--to", svc, "--state-dir", bad}, "--state-dir " + bad},
		{[]string{"connect", "--listen", "127.0.0.1:0"}, "--server HOST:PORT is required"},
		{[]string{"connect", "--server", svc}, "exactly one of --listen ADDR and --stdio"},
		{[]string{"connect", "--server", "127.0.0.1:1", "--listen", "127.0.0.1:0"}, "is not reachable"},
		{[]string{"connect", "--server", svc, "--stdio", "--listen", "x"}, "none of the others can be"},
	} {
		_, _, err := run(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a command writing while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.Write(p)
}

// TestServeStateDirBadState: a saved state that cannot be imported is set aside (renamed
// .failed) and serve starts anyway; the directory and its announcement are private.
func TestServeStateDirBadState(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(filepath.Join(dir, "rocks"), 0o700); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "rocks", "00112233445566778899aabbccddeeff.rock")
	os.WriteFile(garbage, []byte("not a rock"), 0o600)
	srv := freePort(t)
	out := background(t, "serve", "--listen", srv, "--to", echoService(t), "--no-auth", "--state-dir", dir)
	testwait.For(t, "serve to start", func() error {
		if !strings.Contains(out.String(), "(0 rocks imported)") {
			return fmt.Errorf("serve printed %q", out.String())
		}
		return nil
	})
	if _, err := os.Stat(garbage + ".failed"); err != nil {
		t.Fatalf("the bad state was not set aside: %v", err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "announcement")} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Fatalf("%s: %v, %v", p, fi.Mode(), err)
		}
	}
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.String()
}
