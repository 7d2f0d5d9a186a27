package tcprocks

import (
	"bytes"
	"io"
	"testing"
)

func TestHappyPath(t *testing.T) {
	srvCfg, cliCfg := testConfigs(t)
	l := listen(t, srvCfg)
	c, s := pair(t, l, l.Addr().String(), cliCfg)
	if !c.Enhanced() || !s.Enhanced() {
		t.Fatal("not enhanced")
	}
	if c.ID() != s.ID() {
		t.Fatal("IDs differ")
	}
	msg := bytes.Repeat([]byte("hello rock "), 10000)
	go func() {
		c.Write(msg)
		c.CloseWrite()
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("got %d bytes, want %d", len(got), len(msg))
	}
	if _, err := s.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	got, err = io.ReadAll(c)
	if err != nil || string(got) != "bye" {
		t.Fatalf("client read %q, %v", got, err)
	}
}
