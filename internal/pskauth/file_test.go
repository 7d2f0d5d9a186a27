package pskauth

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := bytes.Repeat([]byte{7}, 32)
	got, err := LoadFile(write("good", base64.StdEncoding.EncodeToString(key)+"\n"))
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("good key: %x, %v", got, err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"missing", filepath.Join(dir, "none"), "no such file"},
		{"not base64", write("junk", "not base64 at all!\n"), "not a base64 key"},
		{"short", write("short", base64.StdEncoding.EncodeToString(key[:8])), "64 bits is too short"},
		{"large", write("large", strings.Repeat("A", MaxFileLen+1)), "too large for a key file"},
	} {
		_, err := LoadFile(tc.path)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
