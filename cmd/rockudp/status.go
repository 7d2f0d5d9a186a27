package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/tcprocks"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// How "rockudp status" finds the rocks of the user's processes: every serve, connect and
// tunnel process listens on a Unix socket "PID-RANDOM.sock" in the status directory and
// answers one request, a JSON line {"request":"status"}, with one JSON line: a
// processStatus. The directory is private to the user (0700), and the socket also
// checks its peer's user ID.

// statusRequest is the only request a status socket answers.
const statusRequest = "status"

// maxStatusRequest bounds the request line a status socket reads.
const maxStatusRequest = 1024

// statusTimeout bounds one exchange with a status socket, on both sides.
const statusTimeout = 5 * time.Second

// processStatus is one process's answer.
type processStatus struct {
	PID     int          `json:"pid"`
	Command string       `json:"command"` // "serve", "connect", "tunnel server", ...
	Detail  string       `json:"detail"`  // what it serves or connects to
	Started time.Time    `json:"started"`
	Rocks   []rockStatus `json:"rocks"`
}

// rockStatus is what status shows of one rock.
type rockStatus struct {
	ID            string    `json:"id"`   // 32 hex digits
	Role          string    `json:"role"` // "client" (dialed) or "server" (accepted)
	State         string    `json:"state"`
	Local         string    `json:"local"`
	Remote        string    `json:"remote"`
	PeerName      string    `json:"peer_name,omitempty"`
	BytesSent     uint64    `json:"bytes_sent"`
	BytesReceived uint64    `json:"bytes_received"`
	InFlight      uint64    `json:"bytes_in_flight"`
	Suspensions   int       `json:"suspensions"`
	LastDowntime  float64   `json:"last_downtime_seconds"`
	Established   time.Time `json:"established,omitzero"`
}

// statusOf returns what status shows of a rock.
func statusOf(st tcprocks.Stats) rockStatus {
	return rockStatus{
		ID:            hex.EncodeToString(st.ID[:]),
		Role:          roleName(st.Role),
		State:         st.State.String(),
		Local:         addrString(st.LocalAddr),
		Remote:        addrString(st.RemoteAddr),
		PeerName:      st.PeerName,
		BytesSent:     st.BytesSent,
		BytesReceived: st.BytesReceived,
		InFlight:      st.InFlight,
		Suspensions:   st.Suspensions,
		LastDowntime:  st.LastDowntime.Seconds(),
		Established:   st.Established,
	}
}

// roleName names a rock's side.
func roleName(r callbacks.Role) string {
	switch r {
	case callbacks.Client:
		return "client"
	case callbacks.Server:
		return "server"
	}
	return "?"
}

// addrString is a.String(), or "-" for none.
func addrString(a net.Addr) string {
	if a == nil {
		return "-"
	}
	return a.String()
}

// statusDir returns the directory of the status sockets: $XDG_RUNTIME_DIR/rockudp, else
// /run/user/UID/rockudp when that runtime directory exists, else TMPDIR/rockudp-UID.
func statusDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "rockudp")
	}
	uid := os.Getuid()
	run := filepath.Join("/run/user", strconv.Itoa(uid))
	if fi, err := os.Stat(run); err == nil && fi.IsDir() {
		return filepath.Join(run, "rockudp")
	}
	return filepath.Join(os.TempDir(), "rockudp-"+strconv.Itoa(uid))
}

// privateDir creates dir (mode 0700) if needed and checks that it is a directory of this
// user that nobody else can enter; a directory of ours with a looser mode is tightened.
// what names the directory in errors.
func privateDir(dir, what string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("%s %s is not a directory", what, dir)
	case !ok || int(st.Uid) != os.Getuid():
		return fmt.Errorf("%s %s belongs to another user: remove it or choose another", what, dir)
	case fi.Mode().Perm()&0o077 != 0:
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("%s %s is open to other users and cannot be made private: %w", what, dir, err)
		}
	}
	return nil
}

// socketPID returns the process ID in a status socket's name.
func socketPID(name string) (int, bool) {
	base, ok := strings.CutSuffix(name, ".sock")
	if !ok {
		return 0, false
	}
	p, _, _ := strings.Cut(base, "-")
	pid, err := strconv.Atoi(p)
	return pid, err == nil && pid > 0
}

// processAlive reports whether a process with this ID exists.
func processAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// removeStale removes the status sockets in dir of processes that no longer exist.
func removeStale(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if pid, ok := socketPID(e.Name()); ok && !processAlive(pid) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// statusServer answers status requests on a Unix socket until Close.
type statusServer struct {
	ln   *net.UnixListener
	path string
	info func() processStatus
	log  *slog.Logger
	wg   sync.WaitGroup
}

// startStatus listens on a new socket in the status directory and answers with info().
// It first removes the sockets of processes that died without removing theirs.
func startStatus(info func() processStatus, log *slog.Logger) (*statusServer, error) {
	dir := statusDir()
	if err := privateDir(dir, "status directory"); err != nil {
		return nil, err
	}
	removeStale(dir)
	var rnd [4]byte
	rand.Read(rnd[:])
	path := filepath.Join(dir, fmt.Sprintf("%d-%s.sock", os.Getpid(), hex.EncodeToString(rnd[:])))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	s := &statusServer{ln: ln, path: path, info: info, log: log}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// startStatusOrWarn is startStatus for commands, which run on without a status socket
// (status will not list them); stop is never nil.
func startStatusOrWarn(info func() processStatus, log *slog.Logger) (stop func()) {
	s, err := startStatus(info, log)
	if err != nil {
		log.Warn("rockudp status will not list this process", "err", err)
		return func() {}
	}
	return func() { s.Close() }
}

func (s *statusServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			if err := s.answer(c); err != nil {
				s.log.Debug("status request failed", "err", err)
			}
		}()
	}
}

// answer reads one request from c and writes the answer.
func (s *statusServer) answer(c *net.UnixConn) error {
	c.SetDeadline(time.Now().Add(statusTimeout))
	if err := checkPeerUser(c); err != nil {
		return err
	}
	line, err := bufio.NewReader(io.LimitReader(c, maxStatusRequest)).ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	var req struct {
		Request string `json:"request"`
	}
	enc := json.NewEncoder(c)
	if err := json.Unmarshal(line, &req); err != nil || req.Request != statusRequest {
		return enc.Encode(map[string]string{"error": "unknown request: want {\"request\":\"status\"}"})
	}
	return enc.Encode(s.info())
}

// checkPeerUser refuses a peer of another user (the directory already keeps them out;
// this holds even if its mode was loosened).
func checkPeerUser(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	if int(cred.Uid) != os.Getuid() && cred.Uid != 0 {
		return fmt.Errorf("refused a status request from uid %d", cred.Uid)
	}
	return nil
}

// Close stops answering, removes the socket and waits for answers in progress.
func (s *statusServer) Close() error {
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

// queryStatus asks the process behind the socket at path for its status.
func queryStatus(ctx context.Context, path string) (processStatus, error) {
	var ps processStatus
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return ps, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, `{"request":"status"}`+"\n"); err != nil {
		return ps, err
	}
	dec := json.NewDecoder(io.LimitReader(c, 64<<20))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return ps, fmt.Errorf("reading the answer: %w", err)
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Error != "" {
		return ps, errors.New(e.Error)
	}
	if err := json.Unmarshal(raw, &ps); err != nil {
		return ps, fmt.Errorf("malformed answer: %w", err)
	}
	return ps, nil
}

// collectStatus asks every process with a socket in dir; sockets of dead processes are
// removed, and the other failures are returned as errors.
func collectStatus(ctx context.Context, dir string) ([]processStatus, []error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, []error{fmt.Errorf("status directory: %w", err)}
	}
	var (
		out  []processStatus
		errs []error
	)
	for _, e := range ents {
		pid, ok := socketPID(e.Name())
		if !ok {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if !processAlive(pid) {
			os.Remove(path)
			continue
		}
		ps, err := queryStatus(ctx, path)
		if err != nil {
			errs = append(errs, fmt.Errorf("process %d did not answer: %w", pid, err))
			continue
		}
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b processStatus) int { return a.PID - b.PID })
	return out, errs
}

func newStatusCmd(g *globalOpts) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status",
		Short: "Show every live rock of this user's rockudp processes",
		Long: `status asks every serve, connect and tunnel process of this user, over the Unix sockets
they keep in the status directory, for their rocks, and shows one row per rock: its ID,
role (client: dialed; server: accepted), state, local and remote addresses, bytes each
way, bytes in flight (written, not yet known to be consumed by the peer), suspensions
and the downtime of its last one.

The status directory is $XDG_RUNTIME_DIR/rockudp, else /run/user/UID/rockudp, else
TMPDIR/rockudp-UID; it is private to the user (mode 0700).`,
		Example: "  rockudp status\n  rockudp status --json | jq '.processes[].rocks[].state'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			procs, errs := collectStatus(cmd.Context(), statusDir())
			for _, err := range errs {
				g.logger.Warn("status", "err", err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if procs == nil {
					procs = []processStatus{}
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				enc.SetEscapeHTML(false)
				return enc.Encode(map[string]any{"processes": procs})
			}
			writeStatusTable(out, procs)
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts: {\"processes\": [{pid, command, detail, started, rocks: [...]}]}")
	return c
}

// writeStatusTable prints one row per rock, then one line per process.
func writeStatusTable(w io.Writer, procs []processStatus) {
	if len(procs) == 0 {
		fmt.Fprintln(w, "no rockudp processes are running")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := false
	for _, p := range procs {
		if len(p.Rocks) > 0 && !header {
			fmt.Fprintln(tw, "PID\tCOMMAND\tROCK\tROLE\tSTATE\tLOCAL\tREMOTE\tSENT\tRECEIVED\tIN-FLIGHT\tSUSPENSIONS\tLAST DOWNTIME")
			header = true
		}
		for _, r := range p.Rocks {
			down := "-"
			if d := time.Duration(r.LastDowntime * float64(time.Second)); d > 0 {
				down = d.Round(time.Millisecond).String()
				if d < time.Millisecond {
					down = d.Round(time.Microsecond).String()
				}
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", p.PID, p.Command, shortID(r.ID),
				r.Role, r.State, r.Local, r.Remote, byteCount(r.BytesSent), byteCount(r.BytesReceived),
				byteCount(r.InFlight), r.Suspensions, down)
		}
	}
	tw.Flush()
	if header {
		fmt.Fprintln(w)
	}
	for _, p := range procs {
		fmt.Fprintf(w, "%d: rockudp %s %s, %d rocks\n", p.PID, p.Command, p.Detail, len(p.Rocks))
	}
}

// shortID abbreviates a rock ID for the table (the JSON has it whole).
func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// byteCount formats n bytes with a binary unit.
func byteCount(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
