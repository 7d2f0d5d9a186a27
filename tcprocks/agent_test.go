package tcprocks

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
)

// An agent is one end of a rock in a process of its own: the test binary re-executed with
// agentEnv set to its role. The lab tests run one inside a network namespace (a rock
// reconnects from goroutines, which must run in the namespace), the hand-off test runs two in
// a row. An agent prints one JSON line (agentLine) per event on its standard output.
const agentEnv = "TCPROCKS_TEST_AGENT"

// Agent roles.
const (
	// roleEcho dials -addr and echoes everything it reads until its standard input ends;
	// then it closes the rock and waits for its Closed event.
	roleEcho = "echo"
	// roleExport dials -addr, writes -write bytes of the client stream, reads -read bytes of
	// the server stream, exports the rock to -state and exits.
	roleExport = "export"
	// roleImport imports the rock from -state, writes the client stream from where the
	// exporter stopped up to -write bytes in all and closes its writing side, reads the
	// server stream to its end, checks it, closes the rock and waits for it to finish.
	roleImport = "import"
)

type agentLine struct {
	Ev      string `json:"ev"`
	T       int64  `json:"t"` // Unix nanoseconds
	Cause   string `json:"cause,omitempty"`
	Attempt int    `json:"attempt,omitempty"`
	Local   string `json:"local,omitempty"`
	Remote  string `json:"remote,omitempty"`
	N       int64  `json:"n,omitempty"`
	Err     string `json:"err,omitempty"`
}

type agentOut struct {
	mu     sync.Mutex
	enc    *json.Encoder
	closed chan struct{}
	once   sync.Once
}

func (a *agentOut) print(l agentLine) {
	if l.T == 0 {
		l.T = time.Now().UnixNano()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	_ = a.enc.Encode(l)
}

func (a *agentOut) HandleEvent(e callbacks.Event) {
	l := agentLine{Ev: e.Kind.String(), T: e.Time.UnixNano(), Attempt: e.Attempt}
	if e.Cause != nil {
		l.Cause = e.Cause.Error()
	}
	if e.Local != nil {
		l.Local = e.Local.String()
	}
	a.print(l)
	if e.Kind == callbacks.Closed {
		a.once.Do(func() { close(a.closed) })
	}
}

// runAgent runs an agent and returns its exit status.
func runAgent(role string, args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	addr := fs.String("addr", "", "address to dial")
	state := fs.String("state", "", "file of the exported state")
	write := fs.Int64("write", 0, "bytes of the client stream to write")
	read := fs.Int64("read", 0, "bytes of the server stream to read")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	a := &agentOut{enc: json.NewEncoder(os.Stdout), closed: make(chan struct{})}
	if err := a.run(role, *addr, *state, *write, *read); err != nil {
		a.print(agentLine{Ev: "error", Err: err.Error()})
		return 1
	}
	return 0
}

func (a *agentOut) waitClosed() error {
	select {
	case <-a.closed:
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("agent: the rock did not finish within 30 s of Close")
	}
}

func (a *agentOut) run(role, addr, state string, write, read int64) error {
	cfg := &Config{Handler: a, RequireEnhanced: true}
	switch role {
	case roleEcho, roleExport:
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c, err := Dial(ctx, "tcp", addr, cfg)
		cancel()
		if err != nil {
			return err
		}
		a.print(agentLine{Ev: "connected", Local: c.LocalAddr().String(), Remote: c.RemoteAddr().String()})
		if role == roleEcho {
			go func() { _, _ = io.Copy(c, c) }()
			_, _ = io.Copy(io.Discard, os.Stdin)
			c.Close()
			return a.waitClosed()
		}
		if _, err := c.Write(pattern(seedUp, 0, int(write))); err != nil {
			return err
		}
		if err := readPattern(c, seedDown, 0, read); err != nil {
			return err
		}
		st, err := c.Export()
		if err != nil {
			return err
		}
		if err := os.WriteFile(state, st, 0o600); err != nil {
			return err
		}
		a.print(agentLine{Ev: "exported", N: int64(len(st))})
		return nil
	case roleImport:
		st, err := os.ReadFile(state)
		if err != nil {
			return err
		}
		c, err := Import(st, cfg)
		if err != nil {
			return err
		}
		s := c.Stats()
		a.print(agentLine{Ev: "imported", N: int64(s.BytesSent)})
		errc := make(chan error, 1)
		go func() {
			if _, err := c.Write(pattern(seedUp, s.BytesSent, int(uint64(write)-s.BytesSent))); err != nil {
				errc <- err
				return
			}
			errc <- c.CloseWrite()
		}()
		if err := readPattern(c, seedDown, int64(s.BytesReceived), -1); err != nil {
			return err
		}
		if err := <-errc; err != nil {
			return err
		}
		a.print(agentLine{Ev: "done", N: int64(c.Stats().BytesReceived)})
		c.Close()
		return a.waitClosed()
	}
	return fmt.Errorf("agent: unknown role %q", role)
}

// Streams of the hand-off test: byte i of a stream is a function of its seed and i.
const (
	seedUp   = 17
	seedDown = 91
)

// pattern returns n bytes of stream seed from offset off.
func pattern(seed byte, off uint64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		p := off + uint64(i)
		b[i] = byte(p*2654435761>>13) ^ byte(p>>8) ^ seed
	}
	return b
}

// readPattern reads n bytes (n < 0: to EOF) of stream seed starting at off from r and checks
// each of them.
func readPattern(r io.Reader, seed byte, off, n int64) error {
	buf := make([]byte, 32<<10)
	for got := int64(0); n < 0 || got < n; {
		k := int64(len(buf))
		if n >= 0 {
			k = min(k, n-got)
		}
		m, err := r.Read(buf[:k])
		want := pattern(seed, uint64(off+got), m)
		for i := range m {
			if buf[i] != want[i] {
				return fmt.Errorf("stream byte %d: got %#x, want %#x", off+got+int64(i), buf[i], want[i])
			}
		}
		got += int64(m)
		if err == io.EOF && n < 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("after %d stream bytes: %w", off+got, err)
		}
	}
	return nil
}

// agentProc is a running agent seen from the test.
type agentProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan agentLine
	done  chan struct{} // closed when the agent has exited
	err   error         // its exit status, once done is closed
}

// startAgent starts cmd (the test binary, possibly through "ip netns exec") as an agent.
func startAgent(t *testing.T, cmd *exec.Cmd, role string) *agentProc {
	t.Helper()
	cmd.Env = append(os.Environ(), agentEnv+"="+role)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, lines: make(chan agentLine, 1024), done: make(chan struct{})}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l agentLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Logf("agent: %s", sc.Bytes())
				continue
			}
			p.lines <- l
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stdin.Close()
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
		}
	})
	return p
}

// expect waits for a line for which ok is true, failing on an "error" line, the agent's exit
// or after limit.
func (p *agentProc) expect(t *testing.T, what string, limit time.Duration, ok func(agentLine) bool) agentLine {
	t.Helper()
	timeout := time.After(limit)
	for {
		select {
		case l, more := <-p.lines:
			if !more {
				t.Fatalf("agent exited while waiting for %s", what)
			}
			t.Logf("agent: %s %s %s", time.Unix(0, l.T).Format("15:04:05.000"), l.Ev, l.Cause)
			if l.Ev == "error" {
				t.Fatalf("agent failed while waiting for %s: %s", what, l.Err)
			}
			if ok(l) {
				return l
			}
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func ev(kind string) func(agentLine) bool { return func(l agentLine) bool { return l.Ev == kind } }

// testBinary returns a command running the test binary exe with args.
func testBinary(exe string, args ...string) *exec.Cmd { return exec.Command(exe, args...) }

func itoa(n int) string { return fmt.Sprint(n) }
