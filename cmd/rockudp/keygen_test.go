package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rockudp/rockudp/internal/pskauth"
)

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k.psk")
	if _, _, err := run(t, "keygen", "-o", path); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	key, err := pskauth.LoadFile(path)
	if err != nil || len(key) != pskLen {
		t.Fatalf("loadPSK: %d bytes, %v", len(key), err)
	}
	// Never overwrite by accident; --force replaces and keeps 0600.
	if _, _, err := run(t, "keygen", "-o", path); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("overwrite without --force: %v", err)
	}
	os.Chmod(path, 0o644)
	if _, _, err := run(t, "keygen", "-o", path, "--force"); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode after --force %v, want 0600", st.Mode().Perm())
	}
	again, _ := pskauth.LoadFile(path)
	if string(again) == string(key) {
		t.Fatal("two keys are equal")
	}
	// Standard output.
	out, _, err := run(t, "keygen")
	if err != nil || len(strings.TrimSpace(out)) != 44 {
		t.Fatalf("keygen to stdout: %q %v", out, err)
	}
}

func TestLoadPSKBad(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"notbase64": "this is not base64!\n",
		"short":     "c2hvcnQ=\n",
		"large":     strings.Repeat("A", 5000),
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		if _, err := pskauth.LoadFile(p); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := pskauth.LoadFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file: no error")
	}
}
