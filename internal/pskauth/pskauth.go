// Package pskauth proves, on a rock's data connection, that both ends hold the same
// pre-shared key: a callbacks.Authenticator for tcprocks.Config, run at initialisation
// and at every reconnection (the application-level authentication of paper section 6).
//
// Each side sends HMAC-SHA256(psk, label || role || binding), where binding is the
// per-connection value tcprocks derives from the rock's key exchange
// (callbacks.AuthInfo.Binding), and checks the peer's in constant time. A peer without
// the key cannot answer, and a man in the middle who ran two key exchanges holds two
// different bindings, so it cannot relay the proofs. The exchange is exactly 32 bytes
// each way and leaves nothing unread.
package pskauth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/rockudp/rockudp/callbacks"
)

// MinKeyLen is the shortest accepted key: 128 bits.
const MinKeyLen = 16

const label = "rockudp psk proof v1"

// ErrMismatch: the peer's proof is wrong — it does not hold the same pre-shared key.
var ErrMismatch = errors.New("pskauth: the peer does not hold the same pre-shared key")

// Authenticator is a callbacks.Authenticator that checks a pre-shared key.
type Authenticator struct {
	key []byte
}

var _ callbacks.Authenticator = (*Authenticator)(nil)

// New returns an Authenticator for key (at least MinKeyLen bytes).
func New(key []byte) (*Authenticator, error) {
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("pskauth: a %d-bit key is too short, want at least %d bits", len(key)*8, MinKeyLen*8)
	}
	return &Authenticator{key: append([]byte(nil), key...)}, nil
}

func (a *Authenticator) proof(role callbacks.Role, binding []byte) []byte {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte(label))
	m.Write([]byte{byte(role)})
	m.Write(binding)
	return m.Sum(nil)
}

// Authenticate sends this side's proof and checks the peer's. The context's deadline (or
// 10 s) bounds the exchange.
func (a *Authenticator) Authenticate(ctx context.Context, conn net.Conn, info callbacks.AuthInfo) error {
	if len(info.Binding) == 0 {
		return errors.New("pskauth: no channel binding to sign")
	}
	peer := callbacks.Client
	if info.Role == callbacks.Client {
		peer = callbacks.Server
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(a.proof(info.Role, info.Binding))
		werr <- err
	}()
	got := make([]byte, sha256.Size)
	_, rerr := io.ReadFull(conn, got)
	if err := <-werr; err != nil {
		return fmt.Errorf("pskauth: sending the proof: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("pskauth: reading the peer's proof (does it use a pre-shared key?): %w", rerr)
	}
	if !hmac.Equal(got, a.proof(peer, info.Binding)) {
		return ErrMismatch
	}
	return nil
}
