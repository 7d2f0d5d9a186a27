package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rockudp/rockudp/internal/bench"
)

// benchChildEnv carries a bench child's argument to the test binary (see TestBenchChild).
const benchChildEnv = "ROCKUDP_BENCH_CHILD"

// TestBenchChild is the child process of TestBenchQuick's run, not a test of its own: the
// bench starts children of its executable, which in a test is this test binary, with
// -test.run=^TestBenchChild$ and the argument in the environment. Without that variable it
// does nothing.
func TestBenchChild(t *testing.T) {
	arg := os.Getenv(benchChildEnv)
	if arg == "" {
		return
	}
	if err := bench.RunChild(context.Background(), arg, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// testBenchChild starts this test binary as a bench child.
func testBenchChild(arg string) (string, []string, []string) {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	return exe, []string{"-test.run=^TestBenchChild$", "-test.count=1"}, []string{benchChildEnv + "=" + arg}
}

// runBenchCmd runs `bench args...` in-process with children from this test binary.
func runBenchCmd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	c := newBenchCmdWith(&globalOpts{stderr: &errb}, testBenchChild)
	c.SetOut(&out)
	c.SetErr(&errb)
	c.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err = c.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

// TestBenchQuick runs `rockudp bench --quick --out DIR --json` and checks that every section
// produced its tables, plots and JSON. As root (always in CI) the lab parts run too. Its
// numbers are logged, never judged.
func TestBenchQuick(t *testing.T) {
	root := os.Geteuid() == 0
	if os.Getenv("CI") == "true" && !root {
		t.Fatal("CI=true: the bench's lab parts need root")
	}
	dir := t.TempDir()
	start := time.Now()
	out, errOut, err := runBenchCmd(t, "--quick", "--out", dir, "--json")
	t.Logf("bench --quick took %v; stdout:\n%s", time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "[1/5 blocks") || !strings.Contains(errOut, "[5/5 tunnel") {
		t.Errorf("no progress lines for every section on stderr:\n%s", errOut)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report.md:\n%s", md)
	want := []string{"## Throughput and latency by block size", "### loopback", "## Connection set-up",
		"## Idle rocks at scale", "## UDP tunnel", "## Targets", "rock cached", "![", "`rockudp bench --quick"}
	if root {
		want = append(want, "### ethernet", "## Failure detection and reconnection")
	}
	for _, w := range want {
		if !bytes.Contains(md, []byte(w)) {
			t.Errorf("report.md lacks %q", w)
		}
	}
	if bytes.Contains(md, []byte("failed:")) {
		t.Errorf("a section failed (see the notes in report.md)")
	}
	var rep bench.Report
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report.json: %v", err)
	}
	if len(rep.Links) == 0 || len(rep.Links[0].Rows) == 0 || rep.Setup == nil || len(rep.Scale) == 0 || rep.Tunnel == nil {
		t.Errorf("report.json lacks sections: %d links, setup %v, %d scale rows, tunnel %v", len(rep.Links), rep.Setup != nil, len(rep.Scale), rep.Tunnel != nil)
	}
	if root && len(rep.Failure) == 0 {
		t.Errorf("report.json has no failure measurements although the bench ran as root")
	}
	// --from renders the same report again without measuring.
	again := t.TempDir()
	if _, _, err := runBenchCmd(t, "--from", filepath.Join(dir, "report.json"), "--out", again); err != nil {
		t.Fatalf("--from: %v", err)
	}
	if md2, err := os.ReadFile(filepath.Join(again, "report.md")); err != nil || !bytes.Equal(md, md2) {
		t.Errorf("--from rendered another report.md (%v):\n%s", err, md2)
	}
	for _, name := range []string{"blocks.png", "setup.png", "scale.png", "tunnel.png"} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Error(err)
			continue
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if r := img.Bounds(); r.Dx() < 300 || r.Dy() < 200 {
			t.Errorf("%s is only %v", name, r)
		}
	}
}

func TestBenchBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--sections", "bogus"}, `unknown section "bogus"`},
		{[]string{"extra"}, `unknown command "extra"`},
		{[]string{"child"}, "accepts 1 arg(s), received 0"},
		{[]string{"child", "{"}, "bench: child argument"},
		{[]string{"--from", "/nonexistent/report.json"}, "no such file"},
	} {
		_, _, err := runBenchCmd(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}
