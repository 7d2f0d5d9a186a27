//go:build linux

package cli

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rockudp/rockudp/internal/testport"
	"github.com/rockudp/rockudp/internal/testwait"
)

// sink is a TCP service that reads its connections one after another, in the order they
// arrived, into one hash: what a client streamed through several connections of a
// restarted serve, concatenated.
type sink struct {
	ln    net.Listener
	n     atomic.Int64
	conns atomic.Int32
	mu    sync.Mutex
	h     []byte // the hash once the listener is closed and every connection ended
	done  chan struct{}
}

func newSink(t *testing.T) *sink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		h := sha256.New()
		for {
			c, err := ln.Accept()
			if err != nil {
				s.mu.Lock()
				s.h = h.Sum(nil)
				s.mu.Unlock()
				return
			}
			s.conns.Add(1)
			io.Copy(io.MultiWriter(h, countWriter{&s.n}), c)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-s.done })
	return s
}

// sum closes the sink and returns the hash of everything it received.
func (s *sink) sum() []byte {
	s.ln.Close()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.h
}

type countWriter struct{ n *atomic.Int64 }

func (w countWriter) Write(b []byte) (int, error) { w.n.Add(int64(len(b))); return len(b), nil }

// TestServeStateDir: a client streams through connect and serve --state-dir into a sink;
// serve is stopped with SIGTERM and started again with the same directory mid-stream. The
// sink receives the stream byte-exact (over two service connections), and the client's
// connection never fails.
func TestServeStateDir(t *testing.T) {
	dir := t.TempDir()
	state, runtimeDir, psk := filepath.Join(dir, "state"), filepath.Join(dir, "run"), filepath.Join(dir, "k.psk")
	if out, err := exec.Command(rockudpBin, "keygen", "-o", psk).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	svc := newSink(t)
	srvAddr, local := testport.Addr(t), testport.Addr(t)
	serveArgs := []string{"serve", "--listen", srvAddr, "--to", svc.ln.Addr().String(), "--psk-file", psk,
		"--state-dir", state, "--log-format", "json"}
	serve1 := rockudp(t, nil, runtimeDir, "serve", serveArgs...)
	serve1.waitFor("serving rocks on", lateLimit)
	conn := rockudp(t, nil, runtimeDir, "connect", "connect", "--server", srvAddr, "--listen", local,
		"--psk-file", psk, "--log-format", "json")
	conn.waitFor("carrying connections", lateLimit)

	c, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size, rate = 32 << 20, 8 << 20
	want := sha256.New()
	wrote := make(chan error, 1)
	go func() { // a paced stream, so that the restart falls in its middle
		src := rand.NewChaCha8([32]byte{3})
		buf := make([]byte, 64<<10)
		start := time.Now()
		for sent := 0; sent < size; sent += len(buf) {
			src.Read(buf)
			want.Write(buf)
			if _, err := c.Write(buf); err != nil {
				wrote <- err
				return
			}
			time.Sleep(time.Until(start.Add(time.Duration(sent) * time.Second / rate)))
		}
		wrote <- c.(*net.TCPConn).CloseWrite()
	}()

	testwait.Within(t, lateLimit, "4 MiB at the sink", func() error {
		if n := svc.n.Load(); n < 4<<20 {
			return fmt.Errorf("the sink got only %d bytes", n)
		}
		return nil
	})
	stopped := time.Now()
	if err := serve1.stop(); err != nil {
		t.Fatalf("serve exited with %v:\n%s", err, serve1.out.String())
	}
	saved, _ := filepath.Glob(filepath.Join(state, "rocks", "*.rock"))
	if len(saved) != 1 {
		t.Fatalf("saved rock states: %v, want one\n%s", saved, serve1.out.String())
	}
	for _, p := range []string{state, saved[0]} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Fatalf("%s has mode %v: readable by others", p, perm)
		}
	}
	serve2 := rockudp(t, nil, runtimeDir, "serve2", serveArgs...)
	serve2.waitFor("serving rocks on", lateLimit)
	ev := waitEvents(t, conn.out.String, "rock resumed", 1, lateLimit)
	t.Logf("serve restart: the client's rock resumed %v after SIGTERM (rock downtime %v, %d bytes replayed)",
		ev[0].Time.Sub(stopped).Round(time.Millisecond), ev[0].Downtime.Round(time.Millisecond), ev[0].Replayed)

	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("the client's write failed: %v", err)
		}
	case <-time.After(lateLimit):
		t.Fatal("the client could not finish writing")
	}
	c.SetReadDeadline(time.Now().Add(lateLimit))
	if _, err := io.Copy(io.Discard, c); err != nil { // the sink's FIN, after it read everything
		t.Fatalf("the client's read failed: %v", err)
	}
	testwait.Within(t, lateLimit, "the whole stream at the sink", func() error {
		if svc.n.Load() < size || svc.conns.Load() < 2 {
			return fmt.Errorf("the sink got %d of %d bytes over %d connections", svc.n.Load(), size, svc.conns.Load())
		}
		return nil
	})
	if got := svc.sum(); !bytes.Equal(got, want.Sum(nil)) || svc.n.Load() != size {
		t.Fatalf("the sink got %d bytes with another hash (%x, want %x)", svc.n.Load(), got[:8], want.Sum(nil)[:8])
	}
	for _, e := range events(conn.out.String(), "rock closed") {
		if e.Cause != "" {
			t.Fatalf("the client's rock closed with an error: %s", e.Cause)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(state, "rocks", "*")); len(left) != 0 {
		t.Fatalf("state files left after the import: %v", left)
	}
}
