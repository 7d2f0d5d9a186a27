package pskauth

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// exchange runs both sides over a pipe and returns their errors.
func exchange(t *testing.T, kc, ks []byte, bc, bs []byte) (errC, errS error) {
	t.Helper()
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	ac, err := New(kc)
	if err != nil {
		t.Fatal(err)
	}
	as, err := New(ks)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- as.Authenticate(ctx, s, callbacks.AuthInfo{Role: callbacks.Server, Binding: bs}) }()
	errC = ac.Authenticate(ctx, c, callbacks.AuthInfo{Role: callbacks.Client, Binding: bc})
	return errC, <-done
}

func TestSameKey(t *testing.T) {
	k, b := bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{1}, 32)
	if c, s := exchange(t, k, k, b, b); c != nil || s != nil {
		t.Fatalf("client %v, server %v", c, s)
	}
}

func TestWrongKey(t *testing.T) {
	b := bytes.Repeat([]byte{1}, 32)
	c, s := exchange(t, bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{8}, 32), b, b)
	if !errors.Is(c, ErrMismatch) || !errors.Is(s, ErrMismatch) {
		t.Fatalf("client %v, server %v; want ErrMismatch on both", c, s)
	}
}

// TestDifferentBinding: a man in the middle who ran two key exchanges has two bindings;
// relaying the proofs fails.
func TestDifferentBinding(t *testing.T) {
	k := bytes.Repeat([]byte{7}, 32)
	c, s := exchange(t, k, k, bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32))
	if !errors.Is(c, ErrMismatch) || !errors.Is(s, ErrMismatch) {
		t.Fatalf("client %v, server %v; want ErrMismatch on both", c, s)
	}
}

// TestReflection: a proof sent back to its sender (role swap) does not pass.
func TestReflection(t *testing.T) {
	a, _ := New(bytes.Repeat([]byte{7}, 32))
	b := bytes.Repeat([]byte{1}, 32)
	if bytes.Equal(a.proof(callbacks.Client, b), a.proof(callbacks.Server, b)) {
		t.Fatal("client and server proofs are equal: a reflected proof would pass")
	}
}

func TestSilentPeer(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	go func() { // reads the proof, never answers
		buf := make([]byte, 32)
		s.Read(buf)
	}()
	a, _ := New(bytes.Repeat([]byte{7}, 32))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := a.Authenticate(ctx, c, callbacks.AuthInfo{Role: callbacks.Client, Binding: []byte{1}})
	if err == nil {
		t.Fatal("no error from a silent peer")
	}
}

func TestShortKey(t *testing.T) {
	if _, err := New(make([]byte, 8)); err == nil {
		t.Fatal("8-byte key accepted")
	}
}
