package pskauth

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"
)

// MaxFileLen is the largest key file LoadFile reads.
const MaxFileLen = 4096

// LoadFile reads a key file as `rockudp keygen` writes it: one line of base64 encoding at
// least MinKeyLen bytes. Its errors name the file and say how to make a good one.
func LoadFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("pre-shared key: %w", err)
	}
	if st.Size() > MaxFileLen {
		return nil, fmt.Errorf("pre-shared key %s: %d bytes is too large for a key file (make one with rockudp keygen)", path, st.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pre-shared key: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("pre-shared key %s: not a base64 key (make one with rockudp keygen): %v", path, err)
	}
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("pre-shared key %s: %d bits is too short, want at least %d (make one with rockudp keygen)", path, len(key)*8, MinKeyLen*8)
	}
	return key, nil
}
