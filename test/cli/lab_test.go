//go:build linux

package cli

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rockudp/rockudp/internal/testwait"
	"github.com/rockudp/rockudp/test/netlab"
)

// The lab: a server and a client host on one router.
var (
	serverNet   = netip.MustParsePrefix("198.51.100.0/24") // server 198.51.100.2
	clientNet   = netip.MustParsePrefix("192.0.2.0/25")    // client 192.0.2.2
	clientFirst = netip.MustParsePrefix("192.0.2.2/25")
	clientMoved = netip.MustParsePrefix("192.0.2.77/25")
	serverIP    = "198.51.100.2"
)

const (
	rockPort  = "7000"
	outage    = 30 * time.Second // the link loss of issue 6
	slowRate  = 1 << 20          // bytes/s the application reads while faults are injected
	lateLimit = 2 * time.Minute  // generous bound on any one wait
)

// world is one lab with the test's files.
type world struct {
	lab                    *netlab.Lab
	r                      *netlab.Host
	server, client         *netlab.Host
	serverLink, clientLink *netlab.Link
	dir                    string // test files
	runtimeDir             string // status sockets
	psk                    string
}

func newWorld(t *testing.T) *world {
	lab := netlab.New(t)
	w := &world{lab: lab, r: lab.Router("r"), server: lab.Host("server"), client: lab.Host("client"), dir: t.TempDir()}
	w.serverLink = lab.Connect(w.server, w.r, serverNet)
	w.clientLink = lab.Connect(w.client, w.r, clientNet)
	os.Chmod(w.dir, 0o755)
	w.runtimeDir = filepath.Join(w.dir, "run")
	w.psk = filepath.Join(w.dir, "rockudp.psk")
	if out, err := exec.Command(rockudpBin, "keygen", "-o", w.psk).CombinedOutput(); err != nil {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	return w
}

// serve starts rockudp serve on the server host, forwarding to the local service at to.
func (w *world) serve(t *testing.T, to string, extra ...string) *daemon {
	d := rockudp(t, w.server, w.runtimeDir, "serve", append([]string{"serve", "--listen", ":" + rockPort, "--to", to,
		"--psk-file", w.psk, "--log-format", "json"}, extra...)...)
	d.waitFor("serving rocks on", lateLimit)
	return d
}

// status runs rockudp status on host and returns its table.
func (w *world) status(t *testing.T, host *netlab.Host) string {
	out, err := command(host, w.runtimeDir, rockudpBin, "status").CombinedOutput()
	if err != nil {
		t.Fatalf("status: %v: %s", err, out)
	}
	return string(out)
}

// faults moves the client (address change) and then cuts its link for the outage, while m
// consumes a stream whose client-side rockudp logs to logs() and server to serverLogs();
// it adds a row per fault.
func (w *world) faults(t *testing.T, what string, m *meter, logs, serverLogs func() string, report *netlab.Report) {
	m.waitBytes(t, 2<<20, lateLimit)

	// The client's address changes, as a DHCP client renumbering does.
	resumed := len(events(logs(), "rock resumed"))
	serverResumed := len(events(serverLogs(), "rock resumed"))
	m.measureGaps()
	fault := time.Now()
	if err := w.clientLink.ChangeAddr(clientFirst, clientMoved); err != nil {
		t.Fatal(err)
	}
	row := w.recovery(t, what+": client address change", fault, fault, resumed, serverResumed, m, logs, serverLogs)
	report.Add(row)

	// 30 s of silence on the client's link, in both directions, then the link returns.
	resumed = len(events(logs(), "rock resumed"))
	serverResumed = len(events(serverLogs(), "rock resumed"))
	m.measureGaps()
	fault = time.Now()
	if err := w.clientLink.BlockAll(true); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, logs, "rock suspended", len(events(logs(), "rock suspended"))+1, outage+lateLimit)
	t.Logf("rockudp status on the client during the outage:\n%s", w.status(t, w.client))
	time.Sleep(time.Until(fault.Add(outage))) // the outage itself, not a synchronisation
	restored := time.Now()
	if err := w.clientLink.BlockAll(false); err != nil {
		t.Fatal(err)
	}
	row = w.recovery(t, what+": 30 s link loss", fault, restored, resumed, serverResumed, m, logs, serverLogs)
	report.Add(row)
	t.Logf("rockudp status on the server after the outage:\n%s", w.status(t, w.server))
}

// recovery waits for the rock to resume after a fault (restored: when the network came
// back) and for the stream to flow again, and returns the figures.
func (w *world) recovery(t *testing.T, scenario string, fault, restored time.Time, resumedBefore, serverResumedBefore int,
	m *meter, logs, serverLogs func() string) netlab.Row {
	t.Helper()
	ev := waitEvents(t, logs, "rock resumed", resumedBefore+1, lateLimit)
	res := ev[len(ev)-1]
	sev := waitEvents(t, serverLogs, "rock resumed", serverResumedBefore+1, lateLimit)
	replayed := res.Replayed + sev[len(sev)-1].Replayed
	var detection time.Duration
	if s := events(logs(), "rock suspended"); len(s) > 0 {
		detection = s[len(s)-1].Time.Sub(fault)
	}
	m.waitBytes(t, m.n.Load()+1<<20, lateLimit) // flowing again, past what was buffered
	row := netlab.Row{
		Scenario:      scenario,
		Detection:     detection,
		Recovery:      res.Time.Sub(restored),
		BytesReplayed: replayed, // by both ends
		Notes: fmt.Sprintf("rock downtime %v; longest pause the application saw %v",
			res.Downtime.Round(time.Millisecond), m.longestGap().Round(time.Millisecond)),
	}
	t.Logf("%s: detected after %v, resumed %v after the network was back, %s, %d bytes replayed",
		scenario, row.Detection.Round(time.Millisecond), row.Recovery.Round(time.Millisecond), row.Notes, row.BytesReplayed)
	return row
}

// waitEvents waits until logs() holds at least n events msg and returns them.
func waitEvents(t *testing.T, logs func() string, msg string, n int, timeout time.Duration) []logEvent {
	t.Helper()
	var ev []logEvent
	testwait.Within(t, timeout, fmt.Sprintf("%d %q events", n, msg), func() error {
		if ev = events(logs(), msg); len(ev) < n {
			return fmt.Errorf("%d so far:\n%s", len(ev), logs())
		}
		return nil
	})
	return ev
}

// TestSSHProxyCommand: OpenSSH through "rockudp connect --stdio" as its ProxyCommand; the
// remote command streams a file of known hash, which arrives byte-exact although the
// client's address changes and its link is lost for 30 s; ssh exits 0.
func TestSSHProxyCommand(t *testing.T) {
	t.Parallel()
	need(t, "/usr/sbin/sshd", "ssh", "ssh-keygen")
	w := newWorld(t)
	report := netlab.NewReport(t, "cli-ssh")

	// sshd on the server's loopback, with keys of the test's own.
	hostKey, userKey := filepath.Join(w.dir, "host_key"), filepath.Join(w.dir, "user_key")
	for _, k := range []string{hostKey, userKey} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	pub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(pub))
	knownHosts := filepath.Join(w.dir, "known_hosts")
	os.WriteFile(knownHosts, []byte(serverIP+" "+fields[0]+" "+fields[1]+"\n"), 0o644)
	authorized := filepath.Join(w.dir, "authorized_keys")
	if b, err := os.ReadFile(userKey + ".pub"); err != nil || os.WriteFile(authorized, b, 0o600) != nil {
		t.Fatal("cannot write authorized_keys", err)
	}
	config := filepath.Join(w.dir, "sshd_config")
	os.WriteFile(config, []byte(strings.Join([]string{
		"ListenAddress 127.0.0.1:22", "HostKey " + hostKey, "AuthorizedKeysFile " + authorized,
		"PidFile none", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
		"KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "LogLevel VERBOSE", "",
	}, "\n")), 0o600)
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // sshd's privilege separation directory
		t.Fatal(err)
	}
	sshd := start(t, "sshd", command(w.server, "", "/usr/sbin/sshd", "-D", "-e", "-f", config))
	sshd.waitFor("Server listening on 127.0.0.1 port 22", lateLimit)
	server := w.serve(t, "127.0.0.1:22")

	// A file of known hash to stream.
	const size = 24 << 20
	file := filepath.Join(w.dir, "stream.bin")
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(data)
	os.WriteFile(file, data, 0o644)
	want := sha256.Sum256(data)

	proxy := fmt.Sprintf("%s connect --stdio --server %%h:%s --psk-file %s --log-format json", rockudpBin, rockPort, w.psk)
	ssh := command(w.client, w.runtimeDir, "ssh", "-F", "/dev/null", "-i", userKey, "-o", "IdentitiesOnly=yes",
		"-o", "BatchMode=yes", "-o", "UserKnownHostsFile="+knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "ProxyCommand="+proxy, "root@"+serverIP, "cat "+file)
	m, stderr, wait := stream(t, "ssh", ssh)
	w.faults(t, "ssh", m, stderr.String, server.out.String, report)
	verify(t, "ssh", m, stderr, wait, size, want[:], "an address change and a 30 s link loss")
}

// TestCurlConnectListen: curl downloads 100 MiB from an HTTP server on the server host
// through "rockudp connect --listen"; the download is byte-exact although the client's
// address changes and its link is lost for 30 s.
func TestCurlConnectListen(t *testing.T) {
	t.Parallel()
	need(t, "curl")
	w := newWorld(t)
	report := netlab.NewReport(t, "cli-curl")

	const size = 100 << 20
	want := w.httpFile(t, size)
	server := w.serve(t, "127.0.0.1:8080")
	conn := rockudp(t, w.client, w.runtimeDir, "connect", "connect", "--server", serverIP+":"+rockPort,
		"--listen", "127.0.0.1:8081", "--psk-file", w.psk, "--log-format", "json")
	conn.waitFor("carrying connections", lateLimit)

	curl := command(w.client, "", "curl", "--silent", "--show-error", "--fail", "-o", "-", "http://127.0.0.1:8081/file")
	m, stderr, wait := stream(t, "curl", curl)
	w.faults(t, "curl", m, conn.out.String, server.out.String, report)
	verify(t, "curl", m, stderr, wait, size, want, "an address change and a 30 s link loss")
}

// httpFile serves size pseudo-random bytes at http://127.0.0.1:8080/ on the server host
// (a Go net/http server inside the namespace) and returns their SHA-256.
func (w *world) httpFile(t *testing.T, size int) []byte {
	seed := [32]byte{2}
	h := sha256.New()
	io.Copy(h, io.LimitReader(rand.NewChaCha8(seed), int64(size)))
	ln, err := w.server.Listen("tcp", "127.0.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Length", strconv.Itoa(size))
		io.Copy(rw, io.LimitReader(rand.NewChaCha8(seed), int64(size)))
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return h.Sum(nil)
}

// stream starts cmd, whose standard output a meter consumes; wait waits for its exit once
// the meter has finished. The process is killed if the test ends first.
func stream(t *testing.T, name string, cmd *exec.Cmd) (m *meter, stderr *lockedBuffer, wait func() error) {
	stderr = &lockedBuffer{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	m = newMeter(slowRate)
	m.consume(stdout)
	waited := false
	t.Cleanup(func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, stderr.String())
		}
	})
	return m, stderr, func() error {
		waited = true
		return cmd.Wait()
	}
}

// verify lets the stream end at full speed and checks that the program exited 0 and that
// what arrived has the length and hash wanted.
func verify(t *testing.T, name string, m *meter, stderr *lockedBuffer, wait func() error, size int64, want []byte, through string) {
	n, sum := m.finish(t, lateLimit)
	if err := wait(); err != nil {
		t.Fatalf("%s failed: %v\n%s", name, err, stderr.String())
	}
	if n != size || !bytes.Equal(sum, want) {
		t.Fatalf("received %d bytes with sha256 %x; want %d bytes, %x", n, sum, size, want)
	}
	t.Logf("%s: %d bytes byte-exact (sha256 %x) through %s", name, n, sum[:8], through)
}
