package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rockudp/rockudp/internal/testwait"
)

// statusOf runs "status --json" and decodes it.
func statusJSON(t *testing.T) []processStatus {
	t.Helper()
	out, _, err := run(t, "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Processes []processStatus `json:"processes"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("status --json printed %q: %v", out, err)
	}
	return got.Processes
}

// TestStatus: a serve and a connect with one rock between them; status lists both ends
// of it, as JSON and as a table, and nothing once they have stopped.
func TestStatus(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	if out, _, err := run(t, "status"); err != nil || out != "no rockudp processes are running\n" {
		t.Fatalf("status with nothing running: %q, %v", out, err)
	}
	svc := echoService(t)
	srv, loc := freePort(t), freePort(t)
	stopServe := backgroundStop(t, "serve", "--listen", srv, "--to", svc, "--no-auth")
	waitDial(t, srv).Close()
	stopConnect := backgroundStop(t, "connect", "--server", srv, "--listen", loc)
	c := waitDial(t, loc)
	msg := []byte("counted by status\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}

	var procs []processStatus
	testwait.For(t, "status to show two processes with a rock each", func() error {
		procs = statusJSON(t)
		if len(procs) == 2 && len(procs[0].Rocks) == 1 && len(procs[1].Rocks) == 1 {
			return nil
		}
		return fmt.Errorf("status shows %+v", procs)
	})
	roles := map[string]rockStatus{}
	for _, p := range procs {
		if p.PID != os.Getpid() {
			t.Errorf("pid %d, want %d", p.PID, os.Getpid())
		}
		roles[p.Command] = p.Rocks[0]
	}
	s, cl := roles["serve"], roles["connect"]
	if s.ID == "" || s.ID != cl.ID || len(s.ID) != 32 {
		t.Fatalf("the two ends show rock IDs %q and %q", s.ID, cl.ID)
	}
	if s.Role != "server" || cl.Role != "client" || s.State != "connected" || cl.State != "connected" {
		t.Fatalf("roles/states: serve %s/%s, connect %s/%s", s.Role, s.State, cl.Role, cl.State)
	}
	if s.Local != cl.Remote || s.Remote != cl.Local {
		t.Fatalf("addresses do not mirror: serve %s<-%s, connect %s->%s", s.Local, s.Remote, cl.Local, cl.Remote)
	}
	if cl.BytesSent < uint64(len(msg)) || cl.BytesReceived < uint64(len(msg)) || s.BytesReceived < uint64(len(msg)) {
		t.Fatalf("byte counts: connect sent %d received %d, serve received %d; want at least %d",
			cl.BytesSent, cl.BytesReceived, s.BytesReceived, len(msg))
	}
	table, _, err := run(t, "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ROCK", "LAST DOWNTIME", s.ID[:8], "server", "client", "connected",
		"rockudp serve " + srv, "rockudp connect "} {
		if !strings.Contains(table, want) {
			t.Fatalf("status table lacks %q:\n%s", want, table)
		}
	}
	t.Logf("rockudp status:\n%s", table)

	c.Close()
	stopConnect()
	stopServe()
	if procs := statusJSON(t); len(procs) != 0 {
		t.Fatalf("stopped processes still listed: %+v", procs)
	}
}

// TestStatusStaleSockets: status removes the sockets of dead processes and reports, but
// survives, a live process that does not answer.
func TestStatusStaleSockets(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	dir := statusDir()
	if err := privateDir(dir, "status directory"); err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, strconv.Itoa(dead.Process.Pid)+"-0000.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // the socket file stays, as after a kill -9
	mute := filepath.Join(dir, strconv.Itoa(os.Getpid())+"-mute.sock")
	mln, err := net.ListenUnix("unix", &net.UnixAddr{Name: mute, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer mln.Close()
	go func() { // accepts and closes: not a status server
		for {
			c, err := mln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	out, errOut, err := run(t, "status")
	if err != nil || out != "no rockudp processes are running\n" {
		t.Fatalf("status: %q, %v", out, err)
	}
	if !strings.Contains(errOut, "did not answer") {
		t.Fatalf("status did not report the mute process: %q", errOut)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale socket %s not removed: %v", stale, err)
	}
}

// TestStatusDirPrivate: the status directory is made private, and one of another user is
// refused.
func TestStatusDirPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rockudp")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := privateDir(dir, "status directory"); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("mode %v, want 0700", fi.Mode().Perm())
	}
	if os.Getuid() != 0 {
		return
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := privateDir(dir, "status directory"); err == nil || !strings.Contains(err.Error(), "belongs to another user") {
		t.Fatalf("a directory of another user: %v", err)
	}
}

// TestStatusServerRefusesBadRequest: anything but the status request gets an error.
func TestStatusServerRefusesBadRequest(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	s, err := startStatus(func() processStatus { return processStatus{PID: 1} }, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, `{"request":"shutdown"}`+"\n")
	b, _ := io.ReadAll(c)
	if !strings.Contains(string(b), "unknown request") {
		t.Fatalf("answer %q", b)
	}
	if ps, err := queryStatus(t.Context(), s.path); err != nil || ps.PID != 1 {
		t.Fatalf("status request: %+v, %v", ps, err)
	}
}
