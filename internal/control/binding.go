package control

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"time"

	"github.com/quic-go/quic-go"
)

// ID is the rock's connection ID; it names the key that binds the channel.
type ID [16]byte

// selfSignedCert makes a fresh Ed25519 certificate for the server's TLS. Its
// only job is to let TLS 1.3 run: the client does not verify it, the channel
// binding proofs authenticate both ends.
func selfSignedCert() (tls.Certificate, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "rockudp-control"},
		DNSNames:     []string{"rockudp-control"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(100 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}

func serverTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{ALPN},
		MinVersion:   tls.VersionTLS13,
	}
}

func clientTLS() *tls.Config {
	return &tls.Config{
		NextProtos: []string{ALPN},
		ServerName: "rockudp-control",
		MinVersion: tls.VersionTLS13,
		// The certificate is deliberately not verified: the channel binding
		// (HMAC over the TLS exporter with the rock's control key) authenticates
		// the server and defeats a relaying man in the middle.
		InsecureSkipVerify: true,
	}
}

// quicConfig is the QUIC configuration of both ends. The idle timeout is only a
// safety net behind the heartbeats, and keep-alives are off: heartbeats keep
// the connection alive.
func quicConfig(handshake, idle time.Duration, server bool) *quic.Config {
	c := &quic.Config{
		HandshakeIdleTimeout:  handshake,
		MaxIdleTimeout:        idle,
		KeepAlivePeriod:       0,
		EnableDatagrams:       true,
		MaxIncomingStreams:    -1, // the server opens no streams
		MaxIncomingUniStreams: -1,
		// One small control stream: keep the windows small.
		InitialStreamReceiveWindow:     2 * (MaxMessageLen + MessageHeaderLen),
		MaxStreamReceiveWindow:         8 * (MaxMessageLen + MessageHeaderLen),
		InitialConnectionReceiveWindow: 2 * (MaxMessageLen + MessageHeaderLen),
		MaxConnectionReceiveWindow:     8 * (MaxMessageLen + MessageHeaderLen),
	}
	if server {
		c.MaxIncomingStreams = 1 // the control stream
	}
	return c
}

// exporter returns the TLS exporter value that both proofs are bound to.
func exporter(conn *quic.Conn) ([]byte, error) {
	cs := conn.ConnectionState() // ExportKeyingMaterial has a pointer receiver
	ekm, err := cs.TLS.ExportKeyingMaterial(exporterLabel, nil, exporterLen)
	if err != nil {
		return nil, fmt.Errorf("control: tls exporter: %w", err)
	}
	return ekm, nil
}

// watchDeadline applies ctx's deadline and cancellation through set, and
// returns a function that stops watching and clears the deadline.
func watchDeadline(ctx context.Context, set func(time.Time) error) (undo func()) {
	if d, ok := ctx.Deadline(); ok {
		set(d)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		set(time.Unix(1, 0)) // in the past: unblocks the pending call
		close(fired)
	})
	return func() {
		if !stop() {
			<-fired
		}
		set(time.Time{})
	}
}
