package udpnotify

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/rockudp/rockudp/internal/control"
	"go.uber.org/goleak"
)

// testControl dials the tests' control channels. It outlives every test: a closed rock
// lingers (a second or two here) until its peer has acknowledged the close, and needs its
// control channel until then.
var testControl *control.Client

func TestMain(m *testing.M) {
	cc, err := control.NewClient(nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testControl = cc
	code := m.Run()
	deadline := time.Now().Add(30 * time.Second)
	for lingering() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cc.Close()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// lingering reports whether a rock's goroutine still runs.
func lingering() bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "tcprocks.(*Conn)")
}
