package udpnotify

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

func sampleMessages() []Message {
	a4 := netip.MustParseAddrPort("192.0.2.7:4000")
	a6 := netip.MustParseAddrPort("[2001:db8::7]:4000")
	return []Message{
		{Type: MsgHello, Version: Version, Addrs: []netip.AddrPort{a4, a6}},
		{Type: MsgHello, Version: Version, Addrs: []netip.AddrPort{}},
		{Type: MsgWelcome, Version: Version, SessionID: [16]byte{1, 2, 3}, Port: 5004, Keepalive: 500, MaxAge: 200},
		{Type: MsgAddr, Addrs: []netip.AddrPort{a6}},
		{Type: MsgChallenge, Nonce: [8]byte{9}, Addr: a4, Token: [16]byte{7, 7}},
		{Type: MsgProbeAck, Nonce: [8]byte{9}, Token: [16]byte{8}},
		{Type: MsgValidated, Addr: a6},
		{Type: MsgDatagram, Time: 12345, Payload: []byte("media")},
		{Type: MsgDatagram, Time: 1, Payload: []byte{}},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	var stream []byte
	for _, m := range sampleMessages() {
		stream = AppendMessage(stream, m)
	}
	for _, want := range sampleMessages() {
		got, n, err := ParseMessage(stream)
		if err != nil {
			t.Fatalf("%d: %v", want.Type, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
		// Every strict prefix is short, never malformed.
		for i := range n {
			if _, _, err := ParseMessage(stream[:i]); !errors.Is(err, ErrShort) {
				t.Fatalf("type %d prefix %d: %v", want.Type, i, err)
			}
		}
		stream = stream[n:]
	}
	if len(stream) != 0 {
		t.Fatalf("%d bytes left", len(stream))
	}
}

func TestMessageMalformed(t *testing.T) {
	cases := map[string][]byte{
		"zero length":    {0, 0},
		"too long":       {0x04, 0x01, byte(MsgAddr)},
		"unknown type":   {0, 1, 99},
		"version 0":      AppendMessage(nil, Message{Type: MsgHello}),
		"trailing":       {0, 3, byte(MsgValidated), 4, 1},
		"bad family":     append([]byte{0, 8, byte(MsgValidated), 5}, make([]byte, 6)...),
		"port 0":         AppendMessage(nil, Message{Type: MsgValidated, Addr: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 0)}),
		"too many addrs": {0, 3, byte(MsgAddr), MaxAddrs + 1, 0},
		"short addrs":    {0, 3, byte(MsgAddr), 2, 4},
		"short frame":    {0, 12, byte(MsgDatagram), 4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 5},
		"wrong frame":    append([]byte{0, 12, byte(MsgDatagram), 2}, make([]byte, 10)...),
	}
	for name, b := range cases {
		if _, _, err := ParseMessage(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func sampleDatagrams() []Datagram {
	return []Datagram{
		{Type: DgKeepalive, SessionID: [16]byte{1}},
		{Type: DgEcho, SessionID: [16]byte{2}, Nonce: [8]byte{3}, Token: [16]byte{4}},
		{Type: DgProbe, SessionID: [16]byte{5}, Nonce: [8]byte{6}, Token: [16]byte{7}},
	}
}

func TestDatagramRoundTrip(t *testing.T) {
	for _, want := range sampleDatagrams() {
		b := AppendDatagram(nil, want)
		if !IsControl(b) {
			t.Fatal("not a control datagram")
		}
		got, err := ParseDatagram(b)
		if err != nil || got != want {
			t.Fatalf("got %+v, %v; want %+v", got, err, want)
		}
		if _, err := ParseDatagram(b[:len(b)-1]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("truncated: %v", err)
		}
		if _, err := ParseDatagram(append(b, 0)); !errors.Is(err, ErrMalformed) {
			t.Fatalf("extended: %v", err)
		}
	}
	// An RTP packet (version 2) is never a control datagram.
	if IsControl([]byte{0x80, 0x60, 0, 1, 0, 0, 0, 0}) {
		t.Fatal("RTP taken for control")
	}
}

func FuzzParseMessage(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(AppendMessage(nil, m))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, n, err := ParseMessage(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrShort) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if n < 3 || n > 2+MaxMessageLen || n > len(b) {
			t.Fatalf("consumed %d of %d", n, len(b))
		}
		// What parses re-encodes to the same bytes.
		if again := AppendMessage(nil, m); !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, b[:n])
		}
	})
}

func FuzzParseDatagram(f *testing.F) {
	for _, d := range sampleDatagrams() {
		f.Add(AppendDatagram(nil, d))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDatagram(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if again := AppendDatagram(nil, d); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, b)
		}
	})
}
