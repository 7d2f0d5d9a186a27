package control

import (
	"bytes"
	"errors"
	"testing"
)

func TestHeartbeatRoundTrip(t *testing.T) {
	for _, v := range []uint64{0, 1, 1 << 40, ^uint64(0)} {
		b := AppendHeartbeat([]byte("x"), v)
		got, n, err := ParseHeartbeat(b[1:])
		if err != nil || n != HeartbeatLen || got != v {
			t.Fatalf("%d: got %d, %d, %v", v, got, n, err)
		}
	}
	for _, tc := range []struct {
		b    []byte
		want error
	}{
		{nil, ErrShort},
		{[]byte{TypeHeartbeat, 1, 2}, ErrShort},
		{[]byte{0x02, 0, 0, 0, 0, 0, 0, 0, 0}, ErrVersion},
	} {
		if _, _, err := ParseHeartbeat(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%x: %v, want %v", tc.b, err, tc.want)
		}
	}
}

func TestProofRoundTrip(t *testing.T) {
	var b []byte
	mac := [MACLen]byte{9, 8, 7}
	b = AppendServerProof(nil, mac)
	gotMAC, n, err := ParseServerProof(b)
	if err != nil || n != ServerProofLen || gotMAC != mac {
		t.Fatalf("server proof: %v %d %v", gotMAC, n, err)
	}
	b[0] = 2
	if _, _, err := ParseServerProof(b); !errors.Is(err, ErrVersion) {
		t.Fatalf("server proof version: %v", err)
	}
}

func TestProofLabels(t *testing.T) {
	ekm := bytes.Repeat([]byte{7}, exporterLen)
	if bindMAC(testKey, labelClient, ekm, 0) == bindMAC(testKey, labelServer, ekm, 0) {
		t.Fatal("client and server proofs are equal: a reflected proof would pass")
	}
	if bindMAC(testKey, labelClient, ekm, 0) == bindMAC(testKey, labelClient, ekm, 1) {
		t.Fatal("proofs of two channels are equal: a proof could be moved to another channel")
	}
}

func TestMessageFraming(t *testing.T) {
	b, err := AppendMessage(nil, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = AppendMessage(b, nil)
	m, n, err := ParseMessage(b)
	if err != nil || string(m) != "hello" || n != 9 {
		t.Fatalf("got %q %d %v", m, n, err)
	}
	m, n2, err := ParseMessage(b[n:])
	if err != nil || len(m) != 0 || n2 != MessageHeaderLen {
		t.Fatalf("empty: %q %d %v", m, n2, err)
	}
	if _, err := AppendMessage(nil, make([]byte, MaxMessageLen+1)); !errors.Is(err, ErrTooLong) {
		t.Fatalf("oversized append: %v", err)
	}
	if _, _, err := ParseMessage([]byte{0, 1, 0, 1}); !errors.Is(err, ErrTooLong) {
		t.Fatalf("oversized parse: %v", err)
	}
	if _, _, err := ParseMessage([]byte{0, 0, 0, 2, 1}); !errors.Is(err, ErrShort) {
		t.Fatalf("short parse: %v", err)
	}
}

func FuzzParseHeartbeat(f *testing.F) {
	f.Add(AppendHeartbeat(nil, 0))
	f.Add(AppendHeartbeat(nil, 1<<63+5))
	f.Add([]byte{TypeHeartbeat})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, n, err := ParseHeartbeat(b)
		if err != nil {
			return
		}
		if n != HeartbeatLen || n > len(b) {
			t.Fatalf("n = %d for %d bytes", n, len(b))
		}
		if again := AppendHeartbeat(nil, v); !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoding %x gives %x", b[:n], again)
		}
	})
}

func FuzzParseServerProof(f *testing.F) {
	f.Add(AppendServerProof(nil, [MACLen]byte{1, 2}))
	f.Add([]byte{Version})
	f.Fuzz(func(t *testing.T, b []byte) {
		mac, n, err := ParseServerProof(b)
		if err != nil {
			return
		}
		if n != ServerProofLen || n > len(b) {
			t.Fatalf("n = %d for %d bytes", n, len(b))
		}
		if again := AppendServerProof(nil, mac); !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoding %x gives %x", b[:n], again)
		}
	})
}

func FuzzParseMessage(f *testing.F) {
	m, _ := AppendMessage(nil, []byte("control message"))
	f.Add(m)
	m, _ = AppendMessage(nil, nil)
	f.Add(m)
	f.Add([]byte{0, 1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, n, err := ParseMessage(b)
		if err != nil {
			return
		}
		if n > len(b) || len(m) > MaxMessageLen || n != MessageHeaderLen+len(m) {
			t.Fatalf("n = %d, len(m) = %d for %d bytes", n, len(m), len(b))
		}
		again, err := AppendMessage(nil, m)
		if err != nil || !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoding %x gives %x, %v", b[:n], again, err)
		}
	})
}
