package tcprocks

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
)

// HKDF info labels of the two keys a rock derives.
const (
	labelResume  = "rockudp rocks/1 resume"
	labelControl = "rockudp rocks/1 control"
)

// keys are a rock's secrets: resume authenticates reconnections, control binds the control
// channel.
type keys struct {
	resume, control []byte
}

// deriveKeys runs X25519 with the peer's public key and HKDF-SHA256 over the shared secret
// (followed by the optional pre-shared key) with the transcript clientPub || serverPub || id
// as salt.
func deriveKeys(priv *ecdh.PrivateKey, peerPub []byte, clientPub, serverPub []byte, id [idLen]byte, psk []byte) (keys, error) {
	pub, err := ecdh.X25519().NewPublicKey(peerPub)
	if err != nil {
		return keys{}, fmt.Errorf("tcprocks: peer public key: %w", err)
	}
	shared, err := priv.ECDH(pub)
	if err != nil {
		return keys{}, fmt.Errorf("tcprocks: key exchange: %w", err)
	}
	secret := append(shared, psk...)
	salt := make([]byte, 0, 2*keyLen+idLen)
	salt = append(append(append(salt, clientPub...), serverPub...), id[:]...)
	var k keys
	if k.resume, err = hkdf.Key(sha256.New, secret, salt, labelResume, 32); err != nil {
		return keys{}, err
	}
	if k.control, err = hkdf.Key(sha256.New, secret, salt, labelControl, 32); err != nil {
		return keys{}, err
	}
	return k, nil
}

// mac returns HMAC-SHA256(key, label || parts...).
func mac(key []byte, label string, parts ...[]byte) [macLen]byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	for _, p := range parts {
		m.Write(p)
	}
	var out [macLen]byte
	m.Sum(out[:0])
	return out
}

// serverProof is the server's answer to a resume challenge.
func serverProof(k []byte, id [idLen]byte, nc, ns [nonceLen]byte) [macLen]byte {
	return mac(k, "server", id[:], nc[:], ns[:])
}

// clientProof is the client's answer to a resume challenge.
func clientProof(k []byte, id [idLen]byte, nc, ns [nonceLen]byte) [macLen]byte {
	return mac(k, "client", id[:], ns[:], nc[:])
}

// serverConfirm (in INIT-OK) proves that the server derived the same keys as the client:
// with a pre-shared key, that it holds the client's key.
func serverConfirm(k []byte, id [idLen]byte, clientPub, serverPub []byte) [macLen]byte {
	return mac(k, "confirm server", id[:], clientPub, serverPub)
}

// clientConfirm (CONFIRM) proves the same for the client.
func clientConfirm(k []byte, id [idLen]byte, clientPub, serverPub []byte) [macLen]byte {
	return mac(k, "confirm client", id[:], clientPub, serverPub)
}

// binding is the value given to an Authenticator (callbacks.AuthInfo.Binding).
func binding(k []byte, id [idLen]byte, ctx ...[]byte) []byte {
	b := mac(k, "auth", append([][]byte{id[:]}, ctx...)...)
	return b[:]
}

func randomBytes(b []byte) {
	// crypto/rand.Read never returns an error (Go 1.24+); it crashes the program instead.
	_, _ = rand.Read(b)
}
