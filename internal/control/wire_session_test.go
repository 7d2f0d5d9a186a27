package control

import (
	"bytes"
	"errors"
	"testing"
)

func TestHeartbeatBatch(t *testing.T) {
	b := AppendHeartbeatBatchHeader(nil)
	if err := ParseHeartbeatBatch(b, func(uint32, uint64) { t.Fatal("entry in a keepalive") }); err != nil {
		t.Fatalf("keepalive: %v", err)
	}
	for i := range MaxBatchEntries {
		b = AppendBatchEntry(b, uint32(i), uint64(i)<<40)
	}
	n := 0
	if err := ParseHeartbeatBatch(b, func(ch uint32, v uint64) {
		if ch != uint32(n) || v != uint64(n)<<40 {
			t.Fatalf("entry %d: %d %d", n, ch, v)
		}
		n++
	}); err != nil || n != MaxBatchEntries {
		t.Fatalf("%d entries, %v", n, err)
	}
	for _, tc := range []struct {
		b    []byte
		want error
	}{
		{nil, ErrShort},
		{[]byte{TypeHeartbeat}, ErrVersion},
		{b[:len(b)-1], ErrShort},
		{AppendBatchEntry(b, 1, 1), ErrTooLong},
	} {
		if err := ParseHeartbeatBatch(tc.b, func(uint32, uint64) { t.Fatal("entry of a bad batch") }); !errors.Is(err, tc.want) {
			t.Errorf("%d bytes: %v, want %v", len(tc.b), err, tc.want)
		}
	}
}

func TestSessionFrameHeader(t *testing.T) {
	for _, tc := range []struct {
		typ  byte
		n    int
		want error
	}{
		{FrameBind, 16 + MACLen, nil},
		{FrameBind, 16 + MACLen - 1, ErrShort},
		{FrameBindOK, MACLen + 1, ErrTooLong},
		{FrameRefuse, 1, nil},
		{FrameMsg, 0, nil},
		{FrameMsg, MaxMessageLen, nil},
		{FrameMsg, MaxMessageLen + 1, ErrTooLong},
		{FrameChClose, 7, ErrShort},
		{FrameChClose, 8 + MaxCloseReasonLen, nil},
		{0x77, 0, ErrBadFrame},
	} {
		typ, ch, n, err := ParseSessionFrameHeader(AppendSessionFrameHeader(nil, tc.typ, 7, tc.n))
		if !errors.Is(err, tc.want) || (err == nil && (typ != tc.typ || ch != 7 || n != tc.n)) {
			t.Errorf("type %#x length %d: %#x %d %d %v, want %v", tc.typ, tc.n, typ, ch, n, err, tc.want)
		}
	}
}

func TestTCPWire(t *testing.T) {
	nc := [NonceLen]byte{1, 2}
	id, got, err := ParseTCPHello(AppendTCPHello(nil, testID, nc))
	if err != nil || id != testID || got != nc {
		t.Fatalf("hello: %x %x %v", id, got, err)
	}
	if _, _, err := ParseTCPHello(append(AppendTCPHello(nil, testID, nc), 0)); !errors.Is(err, ErrTooLong) {
		t.Fatalf("long hello: %v", err)
	}
	ns, err := ParseTCPChallenge(AppendTCPChallenge(nil, nc))
	if err != nil || ns != nc {
		t.Fatalf("challenge: %x %v", ns, err)
	}
	code, reason, err := ParseCloseBody(AppendCloseBody(nil, 6, string(bytes.Repeat([]byte{'x'}, 300))))
	if err != nil || code != 6 || len(reason) != MaxCloseReasonLen {
		t.Fatalf("close: %d %d %v", code, len(reason), err)
	}
	if _, _, err := ParseFrameHeader(AppendFrameHeader(nil, FrameDatagram, MaxFrameDatagramLen+1)); !errors.Is(err, ErrTooLong) {
		t.Fatalf("long datagram frame: %v", err)
	}
	if _, _, err := ParseFrameHeader([]byte{9, 0, 0, 0, 0}); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("unknown frame: %v", err)
	}
}

func FuzzParseHeartbeatBatch(f *testing.F) {
	f.Add(AppendBatchEntry(AppendHeartbeatBatchHeader(nil), 3, 1<<33))
	f.Add(AppendHeartbeatBatchHeader(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		again := AppendHeartbeatBatchHeader(nil)
		err := ParseHeartbeatBatch(b, func(ch uint32, v uint64) { again = AppendBatchEntry(again, ch, v) })
		if err != nil {
			if len(again) != 1 {
				t.Fatal("entries reported from a malformed batch")
			}
			return
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding %x gives %x", b, again)
		}
	})
}

func FuzzParseSessionFrameHeader(f *testing.F) {
	f.Add(AppendSessionFrameHeader(nil, FrameMsg, 1, 100))
	f.Add(AppendSessionFrameHeader(nil, FrameBind, 0, 16+MACLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, ch, n, err := ParseSessionFrameHeader(b)
		if err != nil {
			return
		}
		if n > MaxMessageLen {
			t.Fatalf("length %d over the limit", n)
		}
		if again := AppendSessionFrameHeader(nil, typ, ch, n); !bytes.Equal(again, b[:SessionFrameHeaderLen]) {
			t.Fatalf("re-encoding %x gives %x", b[:SessionFrameHeaderLen], again)
		}
	})
}

func FuzzParseFrameHeader(f *testing.F) {
	f.Add(AppendFrameHeader(nil, FrameDatagram, HeartbeatLen))
	f.Add(AppendFrameHeader(nil, FrameClose, 8))
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, n, err := ParseFrameHeader(b)
		if err != nil {
			return
		}
		if n > MaxMessageLen {
			t.Fatalf("length %d over the limit", n)
		}
		if again := AppendFrameHeader(nil, typ, n); !bytes.Equal(again, b[:FrameHeaderLen]) {
			t.Fatalf("re-encoding %x gives %x", b[:FrameHeaderLen], again)
		}
	})
}

func FuzzParseTCPHello(f *testing.F) {
	f.Add(AppendTCPHello(nil, testID, [NonceLen]byte{1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, nc, err := ParseTCPHello(b)
		if err != nil {
			return
		}
		if again := AppendTCPHello(nil, id, nc); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding %x gives %x", b, again)
		}
	})
}

func FuzzParseCloseBody(f *testing.F) {
	f.Add(AppendCloseBody(nil, 5, "dead"))
	f.Fuzz(func(t *testing.T, b []byte) {
		code, reason, err := ParseCloseBody(b)
		if err != nil {
			return
		}
		if again := AppendCloseBody(nil, code, reason); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding %x gives %x", b, again)
		}
	})
}
