package forward

import (
	"bytes"
	"io"
	"net"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestJoinHalfClose: client → [a|Join|b] → server. Each side's half-close reaches the
// other, and every byte arrives once, in order, both ways.
func TestJoinHalfClose(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	done := make(chan Counts)
	go func() {
		n, err := Join(a, b)
		if err != nil {
			t.Errorf("Join: %v", err)
		}
		done <- n
	}()
	up := bytes.Repeat([]byte("client→server "), 100000)
	down := bytes.Repeat([]byte("server→client "), 70000)
	go func() {
		client.Write(up)
		client.CloseWrite()
	}()
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, up) {
		t.Fatalf("server read %d bytes (err %v), want %d", len(got), err, len(up))
	}
	server.Write(down)
	server.CloseWrite()
	got, err = io.ReadAll(client)
	if err != nil || !bytes.Equal(got, down) {
		t.Fatalf("client read %d bytes (err %v), want %d", len(got), err, len(down))
	}
	n := <-done
	if n.AToB != int64(len(up)) || n.BToA != int64(len(down)) {
		t.Fatalf("counts %+v, want %d/%d", n, len(up), len(down))
	}
}

// TestJoinReset: a reset on one side ends both directions with an error.
func TestJoinReset(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	done := make(chan error)
	go func() {
		_, err := Join(a, b)
		done <- err
	}()
	client.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(server, buf); err != nil {
		t.Fatal(err)
	}
	client.SetLinger(0)
	client.Close() // RST
	if err := <-done; err == nil {
		t.Fatal("Join returned nil after a reset")
	}
	if _, err := server.Read(buf); err == nil {
		t.Fatal("server still open after the other side's reset")
	}
}

// TestJoinPipe: connections without CloseWrite (net.Pipe) end both directions at the
// first EOF.
func TestJoinPipe(t *testing.T) {
	c1, a := net.Pipe()
	b, s1 := net.Pipe()
	done := make(chan struct{})
	go func() {
		Join(a, b)
		close(done)
	}()
	go func() {
		c1.Write([]byte("ping"))
		c1.Close()
	}()
	got, _ := io.ReadAll(s1)
	if string(got) != "ping" {
		t.Fatalf("got %q", got)
	}
	<-done
}
