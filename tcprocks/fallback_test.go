package tcprocks

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// plainEchoServer is an ordinary TCP server that echoes until EOF.
func plainEchoServer(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.Copy(c, c)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln
}

func TestFallbackToPlainTCP(t *testing.T) {
	_, cliCfg := testConfigs(t)
	ln := plainEchoServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "tcp", ln.Addr().String(), cliCfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.Enhanced() || c.State() != Connected {
		t.Fatalf("enhanced %v state %v", c.Enhanced(), c.State())
	}
	if _, err := c.Write([]byte("plain")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "plain" {
		t.Fatalf("got %q, %v", got, err)
	}
	c.Close()

	cfg := *cliCfg
	cfg.RequireEnhanced = true
	if c, err := Dial(ctx, "tcp", ln.Addr().String(), &cfg); !errors.Is(err, ErrNotEnhanced) || c != nil {
		t.Fatalf("RequireEnhanced: %v, %v", c, err)
	}
}

func TestListenerAcceptsPlainClients(t *testing.T) {
	srvCfg, _ := testConfigs(t)
	l := listen(t, srvCfg)
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	s, err := l.AcceptConn()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Enhanced() {
		t.Fatal("plain client accepted as a rock")
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "GET " {
		t.Fatalf("read %q, %v", buf, err)
	}
}
