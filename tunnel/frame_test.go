package tunnel

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func TestFrameRoundTrip(t *testing.T) {
	big := bytes.Repeat([]byte{0xab}, MaxPayload)
	frames := []Frame{
		{Type: FrameOpen, Flow: 1, Payload: []byte{}},
		{Type: FrameClose, Flow: 7, Payload: []byte{byte(CloseIdle)}},
		{Type: FrameData, Flow: 1<<32 - 1, Time: 123456, Payload: []byte("hello")},
		{Type: FrameData, Flow: 2, Payload: []byte{}},
		{Type: FrameData, Flow: 3, Time: 1, Payload: big},
	}
	var b []byte
	for _, f := range frames {
		b = AppendFrame(b, f)
	}
	for i, want := range frames {
		got, n, err := ParseFrame(b)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if n != HeaderLen+len(want.Payload) || got.Type != want.Type || got.Flow != want.Flow ||
			got.Time != want.Time || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("frame %d: got %v/%d/%d len %d (n %d), want %v/%d/%d len %d", i,
				got.Type, got.Flow, got.Time, len(got.Payload), n, want.Type, want.Flow, want.Time, len(want.Payload))
		}
		// Every proper prefix is truncated, never malformed.
		for _, cut := range []int{0, 1, HeaderLen - 1, HeaderLen, n - 1} {
			if cut < 0 || cut >= n {
				continue
			}
			if _, _, err := ParseFrame(b[:cut]); !errors.Is(err, ErrTruncated) {
				t.Fatalf("frame %d cut at %d: %v, want ErrTruncated", i, cut, err)
			}
		}
		b = b[n:]
	}
}

func TestHelloRoundTrip(t *testing.T) {
	for _, h := range []Hello{
		{Version: Version},
		{Version: Version, MaxAge: 250 * time.Millisecond, MaxDatagram: MaxPayloadIPv4},
		{Version: Version, MaxAge: time.Hour, MaxDatagram: MaxPayload},
	} {
		b := AppendHello(nil, h)
		f, n, err := ParseFrame(b)
		if err != nil || n != len(b) || f.Type != FrameHello {
			t.Fatalf("%+v: %v %d %v", h, f.Type, n, err)
		}
		got, err := ParseHello(f.Payload)
		if err != nil || got != h {
			t.Fatalf("got %+v %v, want %+v", got, err, h)
		}
	}
	// Sub-millisecond max-ages round up rather than becoming "keep all".
	f, _, _ := ParseFrame(AppendHello(nil, Hello{Version: Version, MaxAge: time.Microsecond}))
	if h, _ := ParseHello(f.Payload); h.MaxAge != time.Millisecond {
		t.Fatalf("1µs max-age became %v", h.MaxAge)
	}
}

func TestParseFrameMalformed(t *testing.T) {
	hdr := func(typ FrameType, flow, tm uint32, n int) []byte {
		b := AppendHeader(nil, typ, flow, tm, n)
		return append(b, make([]byte, min(n, 100))...)
	}
	cases := map[string][]byte{
		"unknown type":      hdr(9, 1, 0, 0),
		"type zero":         hdr(0, 1, 0, 0),
		"oversized length":  hdr(FrameData, 1, 0, MaxPayload+1),
		"max uint16 length": hdr(FrameData, 1, 0, 65535),
		"data on flow 0":    hdr(FrameData, 0, 0, 3),
		"open with body":    hdr(FrameOpen, 1, 0, 1),
		"open on flow 0":    hdr(FrameOpen, 0, 0, 0),
		"close no reason":   hdr(FrameClose, 1, 0, 0),
		"close long":        hdr(FrameClose, 1, 0, 2),
		"hello on a flow":   hdr(FrameHello, 1, 0, helloLen),
		"hello short":       hdr(FrameHello, 0, 0, helloLen-1),
		"open with time":    hdr(FrameOpen, 1, 5, 0),
	}
	for name, b := range cases {
		// The header alone decides: a malformed header is reported even
		// before its body has arrived.
		for _, in := range [][]byte{b, b[:HeaderLen]} {
			if _, _, err := ParseFrame(in); !errors.Is(err, ErrMalformed) {
				t.Errorf("%s (%d bytes): %v, want ErrMalformed", name, len(in), err)
			}
		}
	}
	bad := AppendHello(nil, Hello{Version: 2})
	f, _, err := ParseFrame(bad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseHello(f.Payload); !errors.Is(err, ErrMalformed) {
		t.Fatalf("version 2: %v", err)
	}
}

func FuzzParseFrame(f *testing.F) {
	f.Add(AppendHello(nil, Hello{Version: Version, MaxAge: time.Second, MaxDatagram: MaxPayloadIPv4}))
	f.Add(AppendFrame(nil, Frame{Type: FrameOpen, Flow: 1}))
	f.Add(AppendClose(nil, 1, CloseIdle))
	f.Add(AppendFrame(nil, Frame{Type: FrameData, Flow: 1, Time: 99, Payload: []byte("payload")}))
	f.Add(AppendFrame(AppendFrame(nil, Frame{Type: FrameOpen, Flow: 2}), Frame{Type: FrameData, Flow: 2, Payload: []byte{1}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		for len(b) > 0 {
			fr, n, err := ParseFrame(b)
			if err != nil {
				if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTruncated) {
					t.Fatalf("unexpected error %v", err)
				}
				if n != 0 {
					t.Fatalf("error with n=%d", n)
				}
				return
			}
			if n < HeaderLen || n > len(b) || n != HeaderLen+len(fr.Payload) || len(fr.Payload) > MaxPayload {
				t.Fatalf("n=%d len(b)=%d payload %d", n, len(b), len(fr.Payload))
			}
			// Re-encoding gives the same bytes.
			if re := AppendFrame(nil, fr); !bytes.Equal(re, b[:n]) {
				t.Fatalf("re-encoding differs: %x vs %x", re, b[:n])
			}
			if fr.Type == FrameHello {
				if h, err := ParseHello(fr.Payload); err == nil {
					if h.MaxDatagram > MaxPayload || h.MaxAge < 0 {
						t.Fatalf("hello %+v", h)
					}
				}
			}
			b = b[n:]
		}
	})
}

// FuzzServerStream feeds arbitrary bytes to a Server as if from a client:
// it must never panic nor hang, and must end with an error once the stream
// is closed (ErrMalformed, or the closed stream).
func FuzzServerStream(f *testing.F) {
	hello := AppendHello(nil, Hello{Version: Version, MaxAge: 100 * time.Millisecond, MaxDatagram: MaxPayloadIPv4})
	f.Add(hello)
	s := AppendFrame(append([]byte(nil), hello...), Frame{Type: FrameOpen, Flow: 1})
	s = AppendFrame(s, Frame{Type: FrameData, Flow: 1, Time: 5, Payload: []byte("x")})
	s = AppendFrame(s, Frame{Type: FrameData, Flow: 2, Time: 6, Payload: []byte("unknown flow")})
	s = AppendClose(s, 1, CloseNormal)
	f.Add(s)
	f.Add(AppendFrame(append([]byte(nil), hello...), Frame{Type: FrameOpen, Flow: 1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, peer := net.Pipe()
		sv, err := NewServer(a, "127.0.0.1:9", &Config{MaxFlows: 4})
		if err != nil {
			t.Fatal(err)
		}
		go io.Copy(io.Discard, peer)
		_, _ = peer.Write(b)
		peer.Close()
		<-sv.Done()
		if sv.Err() == nil {
			t.Fatal("ended without a cause")
		}
		sv.Close()
	})
}
