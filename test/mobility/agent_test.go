//go:build linux

package mobility

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/tcprocks"
)

// An agent is one end of a rock in its own process: the test binary re-executed inside a lab
// namespace with agentEnv set to "server" or "client" (see TestMain). It streams a
// deterministic pseudo-random byte stream to its peer at a bounded rate while reading and
// checking the peer's stream, and prints one JSON line (type line) per event on its standard
// output. It reads commands from its standard input: "stop" ends its stream (CloseWrite); it
// then reads the peer's stream to its end, prints a "done" line with the SHA-256 and byte
// counts of both directions, closes the rock gracefully, waits for its Closed event and exits
// (a server only at the end of its input, so that its listener outlives the rock).

// agentEnv selects the agent role ("server" or "client") of a re-executed test binary.
const agentEnv = "ROCKUDP_MOBILITY_AGENT"

// Agent line kinds besides the rock's event kinds ("suspended", "reconnecting", "resumed",
// "closed", "timed out").
const (
	evListening = "listening" // server: Local is the listening address
	evConnected = "connected" // the rock is up: Local and Remote are set
	evProgress  = "progress"  // Sent and Recv, printed while they change
	evDone      = "done"      // both streams ended: every counter and hash is set
	evError     = "error"     // the agent failed: Err says why; it exits with status 1
)

// line is one JSON line of an agent's output.
type line struct {
	Ev       string `json:"ev"`
	T        int64  `json:"t"` // Unix nanoseconds of the event
	Cause    string `json:"cause,omitempty"`
	Local    string `json:"local,omitempty"`
	Remote   string `json:"remote,omitempty"`
	Target   string `json:"target,omitempty"`
	Attempt  int    `json:"attempt,omitempty"`
	Replayed int64  `json:"replayed,omitempty"`
	Downtime int64  `json:"downtime_ns,omitempty"`
	Sent     int64  `json:"sent,omitempty"`
	Recv     int64  `json:"recv,omitempty"`
	SentSHA  string `json:"sent_sha,omitempty"`
	RecvSHA  string `json:"recv_sha,omitempty"`
	Verified int64  `json:"verified,omitempty"` // received bytes equal to the expected stream
	Mismatch int64  `json:"mismatch,omitempty"` // offset of the first wrong byte + 1; 0: none
	Err      string `json:"err,omitempty"`
}

// Streams: each direction has its own seed, so a stream delivered the wrong way round fails.
const (
	seedClientToServer = "rockudp mobility client->server"
	seedServerToClient = "rockudp mobility server->client"
	chunkSize          = 16 << 10
)

func newStream(seed string) *rand.ChaCha8 {
	var s [32]byte
	copy(s[:], seed)
	return rand.NewChaCha8(s)
}

// agent is the state of an agent process.
type agent struct {
	outMu sync.Mutex
	out   *json.Encoder

	stop     chan struct{} // closed by the "stop" command or at the end of the input
	stopOnce sync.Once
	eof      chan struct{} // closed at the end of the input
	closed   chan struct{} // closed at the rock's Closed event
	closeErr atomic.Pointer[string]
	once     sync.Once

	sent, recv atomic.Int64
}

// runAgent runs an agent with its command-line arguments and returns the exit status.
func runAgent(role string, args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	addr := fs.String("addr", "", "server: address to listen on; client: address to dial")
	alternates := fs.String("alternates", "", "client: comma-separated alternate addresses of the server")
	rate := fs.Int("rate", 512<<10, "bytes per second to send")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	a := &agent{out: json.NewEncoder(os.Stdout), stop: make(chan struct{}), eof: make(chan struct{}), closed: make(chan struct{})}
	if err := a.run(role, *addr, *alternates, *rate); err != nil {
		a.print(line{Ev: evError, Err: err.Error()})
		return 1
	}
	return 0
}

func (a *agent) print(l line) {
	if l.T == 0 {
		l.T = time.Now().UnixNano()
	}
	a.outMu.Lock()
	defer a.outMu.Unlock()
	_ = a.out.Encode(l)
}

// HandleEvent prints the rock's events.
func (a *agent) HandleEvent(e callbacks.Event) {
	l := line{Ev: e.Kind.String(), T: e.Time.UnixNano(), Attempt: e.Attempt, Target: e.Target,
		Replayed: e.Replayed, Downtime: int64(e.Downtime)}
	if e.Cause != nil {
		l.Cause = e.Cause.Error()
	}
	if e.Local != nil {
		l.Local = e.Local.String()
	}
	if e.Remote != nil {
		l.Remote = e.Remote.String()
	}
	a.print(l)
	if e.Kind == callbacks.Closed {
		a.once.Do(func() {
			a.closeErr.Store(&l.Cause)
			close(a.closed)
		})
	}
}

func (a *agent) run(role, addr, alternates string, rate int) error {
	cfg := &tcprocks.Config{Handler: a, RequireEnhanced: true}
	var c *tcprocks.Conn
	sendSeed, recvSeed := seedClientToServer, seedServerToClient
	switch role {
	case "server":
		l, err := tcprocks.Listen("tcp", addr, cfg)
		if err != nil {
			return err
		}
		defer l.Close()
		a.print(line{Ev: evListening, Local: l.Addr().String()})
		if c, err = l.AcceptConn(); err != nil {
			return err
		}
		if !c.Enhanced() {
			c.Close()
			return errors.New("agent: the client does not speak rocks")
		}
		sendSeed, recvSeed = recvSeed, sendSeed
	case "client":
		if alternates != "" {
			cfg.Alternates = strings.Split(alternates, ",")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		var err error
		c, err = tcprocks.Dial(ctx, "tcp", addr, cfg)
		cancel()
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("agent: unknown role %q", role)
	}
	return a.stream(c, sendSeed, recvSeed, rate, role == "server")
}

// stream streams over the connected rock c until stopped, prints the done line, closes the
// rock and waits for its end.
func (a *agent) stream(c *tcprocks.Conn, sendSeed, recvSeed string, rate int, server bool) error {
	a.print(line{Ev: evConnected, Local: c.LocalAddr().String(), Remote: c.RemoteAddr().String()})
	go a.commands(os.Stdin)
	progressDone := make(chan struct{})
	go a.progress(progressDone)
	var (
		sendSum hash.Hash
		sendErr error
		sent    = make(chan struct{})
	)
	go func() {
		defer close(sent)
		sendSum, sendErr = a.send(c, sendSeed, rate)
	}()
	recvSum, verified, mismatch, recvErr := a.receive(c, recvSeed)
	<-sent
	close(progressDone)
	if err := errors.Join(sendErr, recvErr); err != nil {
		c.Close()
		return err
	}
	a.print(line{Ev: evDone, Sent: a.sent.Load(), Recv: a.recv.Load(),
		SentSHA: hex.EncodeToString(sendSum.Sum(nil)), RecvSHA: hex.EncodeToString(recvSum.Sum(nil)),
		Verified: verified, Mismatch: mismatch})
	if err := c.Close(); err != nil {
		return fmt.Errorf("agent: close: %w", err)
	}
	select {
	case <-a.closed:
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("agent: rock not closed 2 minutes after Close (state %v)", c.State())
	}
	if cause := *a.closeErr.Load(); cause != "" {
		return fmt.Errorf("agent: rock closed with an error: %s", cause)
	}
	if server {
		// A server stays up after its rock has closed, as servers do: its listener answers
		// a client that comes back to finish its own close (see finish in harness_test.go).
		<-a.eof
	}
	return nil
}

// commands reads commands from r: "stop" (or the end of r) ends the outgoing stream; the end
// of r lets a server exit once its rock has closed.
func (a *agent) commands(r io.Reader) {
	stop := func() { a.stopOnce.Do(func() { close(a.stop) }) }
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "stop" {
			stop()
		}
	}
	stop()
	close(a.eof)
}

// progress prints the byte counters every 200 ms while they change.
func (a *agent) progress(done <-chan struct{}) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var lastSent, lastRecv int64
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		s, r := a.sent.Load(), a.recv.Load()
		if s != lastSent || r != lastRecv {
			a.print(line{Ev: evProgress, Sent: s, Recv: r})
			lastSent, lastRecv = s, r
		}
	}
}

// send writes the stream of seed at rate bytes per second until stopped, then half-closes.
func (a *agent) send(c *tcprocks.Conn, seed string, rate int) (hash.Hash, error) {
	gen, sum := newStream(seed), sha256.New()
	buf := make([]byte, chunkSize)
	per := time.Duration(float64(time.Second) * chunkSize / float64(rate))
	next := time.Now()
	for {
		select {
		case <-a.stop:
			if err := c.CloseWrite(); err != nil {
				return nil, fmt.Errorf("agent: close write: %w", err)
			}
			return sum, nil
		default:
		}
		// Pace at rate, without catching up after a stall (a suspension).
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		if behind := time.Now().Add(-per); next.Before(behind) {
			next = behind
		}
		next = next.Add(per)
		gen.Read(buf)
		if _, err := c.Write(buf); err != nil {
			return nil, fmt.Errorf("agent: write after %d bytes: %w", a.sent.Load(), err)
		}
		sum.Write(buf)
		a.sent.Add(int64(len(buf)))
	}
}

// receive reads the peer's stream to its end, checking it against the stream of seed. It
// returns the SHA-256 of what it read, how many bytes matched before the first wrong one, and
// that byte's offset + 1 (0 if none).
func (a *agent) receive(c *tcprocks.Conn, seed string) (sum hash.Hash, verified, mismatch int64, err error) {
	gen, sum := newStream(seed), sha256.New()
	buf, want := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			sum.Write(buf[:n])
			gen.Read(want[:n])
			if mismatch == 0 {
				if i := firstDiff(buf[:n], want[:n]); i >= 0 {
					mismatch = a.recv.Load() + int64(i) + 1
					verified += int64(i)
				} else {
					verified += int64(n)
				}
			}
			a.recv.Add(int64(n))
		}
		if err == io.EOF {
			return sum, verified, mismatch, nil
		}
		if err != nil {
			return nil, 0, 0, fmt.Errorf("agent: read after %d bytes: %w", a.recv.Load(), err)
		}
	}
}

// firstDiff returns the index of the first byte where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
