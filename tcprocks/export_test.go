package tcprocks

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
)

// exchange writes the client stream from c's count up to up bytes and the server stream from
// s's count up to down bytes, and checks what each side reads up to those totals.
func exchange(t *testing.T, c, s *Conn, up, down int64) {
	t.Helper()
	c.SetDeadline(time.Now().Add(time.Minute))
	s.SetDeadline(time.Now().Add(time.Minute))
	defer c.SetDeadline(time.Time{})
	defer s.SetDeadline(time.Time{})
	cs, ss := c.Stats(), s.Stats()
	errc := make(chan error, 3)
	go func() {
		_, err := c.Write(pattern(seedUp, cs.BytesSent, int(up-int64(cs.BytesSent))))
		errc <- err
	}()
	go func() {
		_, err := s.Write(pattern(seedDown, ss.BytesSent, int(down-int64(ss.BytesSent))))
		errc <- err
	}()
	go func() { errc <- readPattern(c, seedDown, int64(cs.BytesReceived), down-int64(cs.BytesReceived)) }()
	if err := readPattern(s, seedUp, int64(ss.BytesReceived), up-int64(ss.BytesReceived)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// TestExportImportClient: a suspended dialing rock is exported and imported with a fresh
// configuration (new control client and probe cache: another "process"); the streams go on
// byte-exact, including bytes written before the export that the server never received.
func TestExportImportClient(t *testing.T) {
	srvCfg, cliCfg := relayConfigs(t)
	srvCfg.Policy.RefusalGrace, cliCfg.Policy.RefusalGrace = time.Minute, time.Minute
	l := listen(t, srvCfg)
	r := newRelay(t, l)
	var evs eventLog
	cliCfg.Handler = &evs
	c, s := pair(t, l, r.Addr().String(), cliCfg)
	exchange(t, c, s, 100<<10, 70<<10)
	// Bytes the server will not have received: held in the relay, then lost with it.
	r.Blackhole(true)
	if _, err := c.Write(pattern(seedUp, 100<<10, 20<<10)); err != nil {
		t.Fatal(err)
	}
	r.Refuse(true)
	r.Reset()
	r.Blackhole(false)
	waitFor(t, "suspension", func() bool { return c.State() == Suspended })

	state, err := c.Export()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("exported state: %d bytes", len(state))
	if _, err := c.Write([]byte("x")); !errors.Is(err, ErrExported) {
		t.Fatalf("Write after Export: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, ErrExported) {
		t.Fatalf("Read after Export: %v", err)
	}
	if _, err := c.Export(); err == nil {
		t.Fatal("second Export succeeded")
	}
	waitFor(t, "the Closed event", func() bool { return evs.count(callbacks.Closed) == 1 })

	_, fresh := testConfigs(t)
	c2, err := Import(state, fresh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c2.Close(); waitDone(t, c2) })
	if _, err := l.Import(state); err == nil {
		t.Fatal("a listener imported a dialing rock")
	}
	st := c2.Stats()
	if st.ID != c.ID() || st.BytesSent != 120<<10 || st.BytesReceived != 70<<10 || st.State != Suspended {
		t.Fatalf("imported stats %+v", st)
	}
	r.Refuse(false)
	exchange(t, c2, s, 300<<10, 200<<10)
	if c2.Stats().Suspensions != 1 {
		t.Fatalf("suspensions %d", c2.Stats().Suspensions)
	}
}

// TestExportImportServer: an accepted rock is exported from its listener, which then closes;
// a new listener on the same address with the same EDP announcement imports it, and the
// client resumes there.
func TestExportImportServer(t *testing.T) {
	srvCfg, cliCfg := testConfigs(t)
	srvCfg.EDP.Announcement = edp.NewAnnouncement()
	l1, err := Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	addr := l1.Addr().String()
	accepted := make(chan *Conn, 1)
	go func() { s, _ := l1.AcceptConn(); accepted <- s }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, "tcp", addr, cliCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); waitDone(t, c) })
	s := <-accepted
	if s == nil {
		t.Fatal("no rock accepted")
	}
	exchange(t, c, s, 50<<10, 80<<10)

	state, err := s.Export()
	if err != nil {
		t.Fatal(err)
	}
	if len(l1.Conns()) != 0 {
		t.Fatal("the exported rock is still on its listener")
	}
	l1.Close()
	waitListener(t, l1)
	waitFor(t, "the client to notice", func() bool { return c.State() == Suspended || c.Stats().Suspensions > 0 })

	srv2 := &Config{EDP: &edp.Config{FirstByteWait: 2 * time.Second, Announcement: srvCfg.EDP.Announcement}}
	l2, err := Listen("tcp", addr, srv2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l2.Close(); waitListener(t, l2) })
	if _, err := Import(state, nil); err == nil {
		t.Fatal("Import took an accepted rock")
	}
	s2, err := l2.Import(state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close(); waitDone(t, s2) })
	if _, err := l2.Import(state); err == nil {
		t.Fatal("the same rock imported twice")
	}
	exchange(t, c, s2, 200<<10, 300<<10)
	if got := l2.Conns(); len(got) != 1 || got[0] != s2 {
		t.Fatalf("l2.Conns() = %v", got)
	}
}

// TestExportImportProcesses: the dialing rock lives in one process, is exported to a file
// (mode 0600) when the process exits, and a second process imports it; the server's streams
// continue byte-exact.
func TestExportImportProcesses(t *testing.T) {
	srvCfg, _ := testConfigs(t)
	l := listen(t, srvCfg)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "rock.state")
	const up, down, readBefore = 3 << 20, 2 << 20, 1 << 20

	first := startAgent(t, testBinary(exe, "-addr", l.Addr().String(), "-state", path, "-write", itoa(1<<20), "-read", itoa(readBefore)), roleExport)
	s, err := l.AcceptConn()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); waitDone(t, s) })
	// The server writes its whole stream and reads the client's, across both processes.
	errc := make(chan error, 2)
	s.SetDeadline(time.Now().Add(2 * time.Minute))
	go func() {
		if _, err := s.Write(pattern(seedDown, 0, down)); err != nil {
			errc <- err
			return
		}
		errc <- s.CloseWrite()
	}()
	go func() { errc <- readPattern(s, seedUp, 0, -1) }()

	first.expect(t, "the export", time.Minute, ev("exported"))
	<-first.done
	if first.err != nil {
		t.Fatalf("exporting process: %v", first.err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v", fi.Mode(), err)
	}
	second := startAgent(t, testBinary(exe, "-state", path, "-write", itoa(up)), roleImport)
	second.expect(t, "the import", time.Minute, ev("imported"))
	done := second.expect(t, "the end of the streams", 2*time.Minute, ev("done"))
	if done.N != down {
		t.Fatalf("the importing process read up to byte %d, want %d", done.N, down)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Stats().BytesReceived; got != up {
		t.Fatalf("server received %d bytes, want %d", got, up)
	}
	second.expect(t, "the imported rock to close", time.Minute, ev("closed"))
}

func TestExportErrors(t *testing.T) {
	srvCfg, cliCfg := testConfigs(t)
	l := listen(t, srvCfg)
	c, _ := pair(t, l, l.Addr().String(), cliCfg)
	c.Close()
	if _, err := c.Export(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Export after Close: %v", err)
	}
	if _, err := (&Conn{plain: c.conn}).Export(); err == nil {
		t.Fatal("plain TCP exported")
	}
	for _, bad := range [][]byte{nil, []byte("\x89ROCKEXP"), []byte("not a state at all, but long enough to be checked for its magic ....................................................................................................................................")} {
		if _, err := Import(bad, nil); err == nil {
			t.Fatalf("Import(%q) succeeded", bad)
		}
	}
}
