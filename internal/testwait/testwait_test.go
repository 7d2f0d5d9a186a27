package testwait

import (
	"errors"
	"testing"
	"time"
)

func TestFor(t *testing.T) {
	n := 0
	For(t, "three calls", func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n != 3 {
		t.Fatalf("cond called %d times, want 3", n)
	}
}

func TestWithinFails(t *testing.T) {
	ft := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { recover() }()
		Within(ft, 20*time.Millisecond, "never", func() error { return errors.New("no") })
	}()
	<-done
	if !ft.failed {
		t.Fatal("Within did not fail the test")
	}
}

type fakeTB struct {
	testing.TB
	failed bool
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(string, ...any) {
	f.failed = true
	panic("fatal")
}
