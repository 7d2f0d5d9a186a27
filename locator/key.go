package locator

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/miekg/dns"
)

// MaxKeyFileSize bounds a key file read by LoadKey or parsed by ParseKey.
const MaxKeyFileSize = 64 << 10

// Key is a TSIG key (RFC 8945) shared by a DNS server and the clients allowed to update it.
type Key struct {
	// Name is the key's name, a domain name ("rockudp-key."); it is canonicalised on use.
	Name string
	// Algorithm is the MAC algorithm. Default dns.HmacSHA256 ("hmac-sha256.").
	Algorithm string
	// Secret is the base64 encoding of the shared secret.
	Secret string
}

// algorithms are the accepted TSIG algorithms.
var algorithms = []string{dns.HmacSHA256, dns.HmacSHA384, dns.HmacSHA512}

// canonical returns k with a canonical name and algorithm, checking every field.
func (k Key) canonical() (Key, error) {
	name, err := CanonicalName(k.Name)
	if err != nil {
		return Key{}, fmt.Errorf("locator: key name: %w", err)
	}
	k.Name = name
	if k.Algorithm == "" {
		k.Algorithm = dns.HmacSHA256
	}
	k.Algorithm = dns.CanonicalName(k.Algorithm)
	ok := false
	for _, a := range algorithms {
		ok = ok || a == k.Algorithm
	}
	if !ok {
		return Key{}, fmt.Errorf("locator: key %s: unsupported algorithm %q", k.Name, k.Algorithm)
	}
	raw, err := base64.StdEncoding.DecodeString(k.Secret)
	if err != nil || len(raw) < 16 {
		return Key{}, fmt.Errorf("locator: key %s: secret must be base64 of at least 16 bytes", k.Name)
	}
	return k, nil
}

// GenerateKey returns a new hmac-sha256 key with a random 256-bit secret.
func GenerateKey(name string) (Key, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return Key{}, fmt.Errorf("locator: %w", err)
	}
	return Key{Name: name, Algorithm: dns.HmacSHA256, Secret: base64.StdEncoding.EncodeToString(raw)}.canonical()
}

// AppendKey appends k to b as a BIND key statement, the format of tsig-keygen's output and
// of files nsupdate -k and named.conf's include read:
//
//	key "rockudp-key" {
//		algorithm hmac-sha256;
//		secret "base64...";
//	};
func AppendKey(b []byte, k Key) []byte {
	name := strings.TrimSuffix(k.Name, ".")
	algo := strings.TrimSuffix(k.Algorithm, ".")
	if algo == "" {
		algo = strings.TrimSuffix(dns.HmacSHA256, ".")
	}
	return fmt.Appendf(b, "key %q {\n\talgorithm %s;\n\tsecret %q;\n};\n", name, algo, k.Secret)
}

// ParseKey parses the first key statement of a BIND configuration fragment (see AppendKey).
// Comments (#, // and /* */) are skipped; other statements before the key are an error.
func ParseKey(b []byte) (Key, error) {
	if len(b) > MaxKeyFileSize {
		return Key{}, fmt.Errorf("locator: key file larger than %d bytes", MaxKeyFileSize)
	}
	toks, err := confTokens(string(b))
	if err != nil {
		return Key{}, err
	}
	bad := errors.New(`locator: key file: want key "name" { algorithm A; secret "S"; };`)
	if len(toks) < 4 || toks[0] != "key" || toks[2] != "{" {
		return Key{}, bad
	}
	k := Key{Name: toks[1]}
	rest := toks[3:]
	for len(rest) > 0 && rest[0] != "}" {
		if len(rest) < 3 || rest[2] != ";" {
			return Key{}, bad
		}
		switch rest[0] {
		case "algorithm":
			k.Algorithm = rest[1]
		case "secret":
			k.Secret = rest[1]
		default:
			return Key{}, fmt.Errorf("locator: key file: unknown option %q", rest[0])
		}
		rest = rest[3:]
	}
	if len(rest) < 2 || rest[1] != ";" {
		return Key{}, bad
	}
	return k.canonical()
}

// confTokens splits BIND configuration text into words, quoted strings (unquoted), and the
// punctuation { } ;.
func confTokens(s string) ([]string, error) {
	var toks []string
	for len(s) > 0 {
		switch c := s[0]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			s = s[1:]
		case c == '#' || strings.HasPrefix(s, "//"):
			i := strings.IndexByte(s, '\n')
			if i < 0 {
				i = len(s) - 1
			}
			s = s[i+1:]
		case strings.HasPrefix(s, "/*"):
			i := strings.Index(s[2:], "*/")
			if i < 0 {
				return nil, errors.New("locator: key file: unterminated comment")
			}
			s = s[i+4:]
		case c == '{' || c == '}' || c == ';':
			toks = append(toks, s[:1])
			s = s[1:]
		case c == '"':
			i := strings.IndexByte(s[1:], '"')
			if i < 0 {
				return nil, errors.New("locator: key file: unterminated string")
			}
			toks = append(toks, s[1:i+1])
			s = s[i+2:]
		default:
			i := strings.IndexAny(s, " \t\r\n{};\"#")
			if i < 0 {
				i = len(s)
			}
			toks = append(toks, s[:i])
			s = s[i:]
		}
	}
	return toks, nil
}

// LoadKey reads a key file written by WriteKey or tsig-keygen.
func LoadKey(path string) (Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return Key{}, fmt.Errorf("locator: %w", err)
	}
	defer f.Close()
	b := make([]byte, MaxKeyFileSize+1)
	n, err := readFull(f, b)
	if err != nil {
		return Key{}, fmt.Errorf("locator: %w", err)
	}
	return ParseKey(b[:n])
}

// WriteKey writes k to path as a BIND key statement, readable by the owner only (0600).
func WriteKey(path string, k Key) error {
	k, err := k.canonical()
	if err != nil {
		return err
	}
	return writeFileAtomic(path, AppendKey(nil, k), 0o600)
}
