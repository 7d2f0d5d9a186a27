package edp

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// fuzzAnn is a fixed announcement, so seed inputs can carry it.
func fuzzAnn() []byte {
	a := make([]byte, AnnouncementLen)
	copy(a, magic[:])
	for i := len(magic); i < len(a); i++ {
		a[i] = byte(i)
	}
	return a
}

func mustMessage(t testing.TB, m message) []byte {
	b, err := appendMessage(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// validMessages are valid encodings of every message type, the fuzz seeds.
func validMessages(t testing.TB) [][]byte {
	return [][]byte{
		mustMessage(t, message{Type: msgOffer, Entries: []entry{{ID: ID{"rocks", 1}, Params: []byte("key material")}, {ID: ID{"zstd", 2}}}}),
		mustMessage(t, message{Type: msgOffer}),
		mustMessage(t, message{Type: msgAgree, Entries: []entry{{ID: ID{"rocks", 1}, Params: bytes.Repeat([]byte{7}, MaxParamsLen)}}}),
		mustMessage(t, message{Type: msgList, Entries: []entry{{ID: ID{"rocks", 1}}, {ID: ID{"a.b-c", 255}}}}),
		mustMessage(t, message{Type: msgReject, Code: CodeStale, Text: "stale announcement, re-probe"}),
	}
}

func FuzzParseMessage(f *testing.F) {
	for _, m := range validMessages(f) {
		f.Add(m)
		f.Add(m[:len(m)-1])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, n, err := parseMessage(b)
		if err != nil {
			if n != 0 {
				t.Fatalf("error %v with n=%d", err, n)
			}
			return
		}
		if n < msgHeaderLen || n > len(b) {
			t.Fatalf("n=%d of %d bytes", n, len(b))
		}
		again, err := appendMessage(nil, m)
		if err != nil {
			t.Fatalf("parsed %+v does not encode: %v", m, err)
		}
		if !bytes.Equal(again, b[:n]) {
			t.Fatalf("round trip: %x != %x", again, b[:n])
		}
	})
}

func FuzzProbeReply(f *testing.F) {
	ann := fuzzAnn()
	f.Add([]byte{})
	f.Add(ann)
	f.Add(ann[:100])
	f.Add([]byte(banner))
	for _, m := range validMessages(f) {
		f.Add(append(bytes.Clone(ann), m...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := readProbeReply(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err) // a reader's EOF is never an error
		}
		if r.Enhanced != (len(b) >= AnnouncementLen && bytes.Equal(b[:len(magic)], magic[:])) {
			t.Fatalf("enhanced=%v for %d bytes", r.Enhanced, len(b))
		}
		if r.Enhanced && !bytes.Equal(r.Announcement, b[:AnnouncementLen]) {
			t.Fatal("announcement differs from the bytes read")
		}
	})
}

// fakeConn is a net.Conn over fixed input; what is written goes to out.
type fakeConn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *fakeConn) Read(b []byte) (int, error)       { return c.in.Read(b) }
func (c *fakeConn) Write(b []byte) (int, error)      { return c.out.Write(b) }
func (c *fakeConn) Close() error                     { return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fakeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzClassify feeds arbitrary client bytes to the server's classifier: it must
// answer, reject or hand over, never panic or hang; an ordinary connection must reach
// the application with every byte intact.
func FuzzClassify(f *testing.F) {
	ann := fuzzAnn()
	f.Add([]byte{})
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte{0x16, 3, 1, 0, 0xa5})
	f.Add(magic[:5])
	f.Add(ann)
	for _, m := range validMessages(f) {
		f.Add(append(bytes.Clone(ann), m...))
	}
	f.Add(append(bytes.Clone(ann), 1, 1, 0xff, 0xff))
	f.Add(append(bytes.Clone(ann), 2, 1, 0, 0))
	hello := func(role Role, peer []byte) ([]byte, any, error) {
		if len(peer) > 10 {
			return nil, nil, errors.New("too long")
		}
		return peer, nil, nil
	}
	l := NewListener(listenTCP(f), &Config{Announcement: ann, Enhancements: []Enhancement{
		{Name: "rocks", Version: 1, Hello: hello}, {Name: "zstd", Version: 2},
	}})
	f.Cleanup(func() { l.Close() })
	f.Fuzz(func(t *testing.T, b []byte) {
		fc := &fakeConn{in: bytes.NewReader(b)}
		c, err := l.classify(fc)
		switch {
		case c == nil && err == nil: // a probe
			if len(b) != 0 || !bytes.Equal(fc.out.Bytes()[:AnnouncementLen], ann) {
				t.Fatalf("probe answer for %d bytes of input", len(b))
			}
		case c == nil:
		case c.Result().Enhanced:
			if _, _, err := parseMessage(fc.out.Bytes()); err != nil {
				t.Fatalf("bad agreement %x: %v", fc.out.Bytes(), err)
			}
		default:
			got, _ := io.ReadAll(c)
			if !bytes.Equal(got, b) {
				t.Fatalf("ordinary conn reads %x, client sent %x", got, b)
			}
		}
	})
}
