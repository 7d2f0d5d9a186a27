package edp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// FirstByteWait of an hour in these tests proves that classification never waits for
// it when the client speaks first: the exchange would hang otherwise.
const never = time.Hour

func TestHTTPThroughListener(t *testing.T) {
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	l := NewListener(listenTCP(t), &Config{FirstByteWait: never})
	ts.Listener = l
	ts.Start()
	defer ts.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for i := range 3 {
		resp, err := client.Get(fmt.Sprintf("%s/x%d", ts.URL, i))
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != fmt.Sprintf("hello /x%d", i) {
			t.Fatalf("body %q, %v", body, err)
		}
	}
	if s := l.Stats(); s.Ordinary != 1 || s.Probes != 0 || s.Enhanced != 0 {
		t.Errorf("stats %+v, want one ordinary (keep-alive) connection", s)
	}
}

// dialRaw opens an ordinary TCP connection.
func dialRaw(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func TestClientSpeaksFirst(t *testing.T) {
	accepted := make(chan *Conn, 1)
	srv := startApp(t, &Config{FirstByteWait: never}, func(c *Conn) { accepted <- c })
	req := "GET /index.html HTTP/1.1\r\nHost: example\r\nUser-Agent: edp-test\r\n\r\n"
	c := dialRaw(t, srv.addr())
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	// The application's first read returns the whole request: the classifier looked
	// at the first byte of the client's first segment and handed it over.
	buf := make([]byte, 4096)
	n, err := s.Read(buf)
	if err != nil || string(buf[:n]) != req {
		t.Fatalf("first read %q, %v; want the whole request", buf[:n], err)
	}
	// No round trip added, counted on the wire: the request went out in one flight
	// and reached the application before the server had sent the client a single
	// byte (the classifier answers nothing and waits for nothing more).
	if srvW, ok := tcpCounts(t, s); ok {
		cliW, _ := tcpCounts(t, c)
		if srvW.DataSegsOut != 0 || cliW.BytesReceived != 0 {
			t.Errorf("before the application answered, the server sent %d data segments and the client received %d bytes; want 0 and 0",
				srvW.DataSegsOut, cliW.BytesReceived)
		}
	}
	if r := s.Result(); r.Enhanced || r.Reason != ReasonData {
		t.Errorf("result %+v", r)
	}
	resp := "HTTP/1.1 204 No Content\r\n\r\n"
	s.Write([]byte(resp))
	got := make([]byte, len(resp))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	// The counter is live: now the client has received exactly the response.
	if w, ok := tcpCounts(t, c); ok && w.BytesReceived != uint64(len(resp)) {
		t.Errorf("client received %d bytes in all, want the %d of the response", w.BytesReceived, len(resp))
	}
}

func TestOneByteClient(t *testing.T) {
	srv := startApp(t, &Config{FirstByteWait: never}, func(c *Conn) {
		b := make([]byte, 10)
		n, _ := c.Read(b)
		c.Write(append([]byte("got "), b[:n]...))
	})
	c := dialRaw(t, srv.addr())
	c.Write([]byte("x"))
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "got x" {
		t.Fatalf("reply %q, %v", got, err)
	}
}

func TestServerSpeaksFirst(t *testing.T) {
	for _, wait := range []time.Duration{0, 20 * time.Millisecond} { // 0: kernel RTT
		t.Run(fmt.Sprint(wait), func(t *testing.T) {
			reasons := make(chan Reason, 1)
			srv := startApp(t, &Config{FirstByteWait: wait}, func(c *Conn) {
				reasons <- c.Result().Reason
				c.Write([]byte(banner))
				b := make([]byte, 4)
				io.ReadFull(c, b)
				c.Write(b)
			})
			c := dialRaw(t, srv.addr())
			got := make([]byte, len(banner))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != banner {
				t.Fatalf("banner %q, %v", got, err)
			}
			if r := <-reasons; r != ReasonTimeout {
				t.Errorf("reason %v, want timeout", r)
			}
			c.Write([]byte("QUIT"))
			if _, err := io.ReadFull(c, got[:4]); err != nil || string(got[:4]) != "QUIT" {
				t.Fatalf("echo %q, %v", got[:4], err)
			}
		})
	}
}

// A client whose first byte happens to equal the magic's first byte is held for one
// more FirstByteWait, then handed over with the byte intact.
func TestMagicPrefixClient(t *testing.T) {
	accepted := make(chan *Conn, 1)
	srv := startApp(t, &Config{FirstByteWait: 20 * time.Millisecond}, func(c *Conn) { accepted <- c })
	c := dialRaw(t, srv.addr())
	c.Write(magic[:3])
	s := <-accepted
	b := make([]byte, 10)
	n, err := s.Read(b)
	if err != nil || !bytes.Equal(b[:n], magic[:3]) || s.Result().Reason != ReasonData {
		t.Fatalf("read %x, %v, %+v", b[:n], err, s.Result())
	}
	// And then bytes that break the magic: handed over at once.
	srv2 := startApp(t, &Config{FirstByteWait: never}, func(c *Conn) { accepted <- c })
	c2 := dialRaw(t, srv2.addr())
	c2.Write(append(magic[:2:2], 'x'))
	s = <-accepted
	if n, _ := io.ReadFull(s, b[:3]); n != 3 || !bytes.Equal(b[:3], append(magic[:2:2], 'x')) {
		t.Fatalf("read %x", b[:n])
	}
}

func TestProbeNeverReachesApp(t *testing.T) {
	accepted := make(chan *Conn, 10)
	srv := startApp(t, serverCfg(Enhancement{Name: "rocks", Version: 1}, Enhancement{Name: "zstd", Version: 3}),
		func(c *Conn) { accepted <- c })
	r, err := Probe(testCtx(t), "tcp", srv.addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Enhanced || fmt.Sprint(r.Offered) != "[rocks/1 zstd/3]" || !bytes.Equal(r.Announcement, srv.l.Announcement()) {
		t.Fatalf("probe %+v", r)
	}
	if s := srv.l.Stats(); s.Probes != 1 {
		t.Errorf("stats %+v", s)
	}
	select {
	case c := <-accepted:
		t.Fatalf("probe reached the application: %+v", c.Result())
	default:
	}
}

// rawHandshake sends b on a fresh connection and returns what the server answers
// before closing.
func rawHandshake(t *testing.T, addr string, b []byte) []byte {
	t.Helper()
	c := dialRaw(t, addr)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return reply
}

func TestServerRejects(t *testing.T) {
	srv := startApp(t, serverCfg(), echo)
	ann := srv.l.Announcement()
	offer, _ := appendMessage(nil, message{Type: msgOffer, Entries: []entry{{ID: ID{"rocks", 1}}}})
	other := NewAnnouncement()
	tests := []struct {
		name string
		send []byte
		code ErrorCode
	}{
		{"stale", append(other, offer...), CodeStale},
		{"version", append(bytes.Clone(ann), 2, 1, 0, 0), CodeVersion},
		{"type", append(bytes.Clone(ann), 1, 9, 0, 0), CodeMalformed},
		{"agree-instead-of-offer", append(bytes.Clone(ann), 1, byte(msgAgree), 0, 1, 0), CodeMalformed},
		{"oversized", binary.BigEndian.AppendUint16(append(bytes.Clone(ann), 1, byte(msgOffer)), 65535), CodeMalformed},
		{"bad-name", append(bytes.Clone(ann), 1, 1, 0, 6, 1, 1, 'X', 1, 0, 0), CodeMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reply := rawHandshake(t, srv.addr(), tt.send)
			m, n, err := parseMessage(reply)
			if err != nil || n != len(reply) || m.Type != msgReject || m.Code != tt.code {
				t.Fatalf("reply %q: %+v, %v; want reject %v", reply, m, err, tt.code)
			}
		})
	}
	// The Dial side of a stale announcement given in Config: an error, no re-probe.
	_, err := Dial(testCtx(t), "tcp", srv.addr(), &Config{Announcement: other})
	var he *HandshakeError
	if !errors.Is(err, ErrStaleAnnouncement) || !errors.As(err, &he) {
		t.Fatalf("dial with a stale announcement: %v", err)
	}
	waitFor(t, "the server to count 7 failures", func() bool { return srv.l.Stats().Failed == uint64(len(tests))+1 })
	if s := srv.l.Stats(); s.Probes != 0 {
		t.Errorf("stats %+v", s)
	}
}

// A server that answers probes but never answers the offer: the Dial times out
// with a net.Error.
func TestHandshakeTimeout(t *testing.T) {
	ann := NewAnnouncement()
	srv := startPlain(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		if len(b) == 0 {
			c.Write(ann) // a probe
			c.Close()
		}
	})
	_, err := Dial(testCtx(t), "tcp", srv.ln.Addr().String(), &Config{HandshakeTimeout: 50 * time.Millisecond})
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, errDeadline()) {
		t.Fatalf("dial: %v; want a timeout net.Error", err)
	}
}

func TestListenerClose(t *testing.T) {
	l := NewListener(listenTCP(t), nil)
	// A silent client being classified when the listener closes.
	c := dialRaw(t, l.Addr().String())
	waitFor(t, "the silent client to be pending", func() bool { return l.Stats().Pending == 1 })
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("pending connection still open after Close")
	}
}

func TestListenerBadConfig(t *testing.T) {
	for _, cfg := range []*Config{
		{Announcement: []byte("short")},
		{Enhancements: []Enhancement{{Name: "Rocks", Version: 1}}},
		{Enhancements: []Enhancement{{Name: "a", Version: 1}, {Name: "a", Version: 1}}},
	} {
		l := NewListener(listenTCP(t), cfg)
		if _, err := l.Accept(); err == nil {
			t.Errorf("Accept with config %+v succeeded", cfg)
		}
		if _, err := Dial(testCtx(t), "tcp", l.Addr().String(), cfg); err == nil {
			t.Errorf("Dial with config %+v succeeded", cfg)
		}
		l.Close()
	}
}

// At MaxPending the listener stops accepting: the next client waits in the kernel's
// backlog, unharmed, until a slot frees.
func TestMaxPending(t *testing.T) {
	accepted := make(chan *Conn, 3)
	srv := startApp(t, &Config{MaxPending: 2, FirstByteWait: never}, func(c *Conn) { accepted <- c })
	s1, s2 := dialRaw(t, srv.addr()), dialRaw(t, srv.addr())
	waitFor(t, "two pending", func() bool { return srv.l.Stats().Pending == 2 })
	third := dialRaw(t, srv.addr()) // connect completes in the kernel backlog
	third.Write([]byte("third"))
	select {
	case c := <-accepted:
		t.Fatalf("accepted %+v beyond MaxPending", c.Result())
	case <-time.After(50 * time.Millisecond): // no event to wait for: absence of one
	}
	s1.Write([]byte("first"))
	got := map[string]bool{}
	for range 2 {
		b := make([]byte, 5)
		if _, err := io.ReadFull(<-accepted, b); err != nil {
			t.Fatal(err)
		}
		got[string(b)] = true
	}
	if !got["first"] || !got["third"] {
		t.Fatalf("got %v; want first and third", got)
	}
	s2.Close()
}
