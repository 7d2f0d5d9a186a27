package tcprocks

import (
	"bytes"
	"testing"

	"github.com/rockudp/rockudp/callbacks"
)

// Valid encodings, used as fuzz seeds.
func seedInit() []byte {
	m := initMsg{Limits: limits{Recv: 1 << 20, Send: 4 << 20}, Flags: flagPSK, Name: "laptop.example.org"}
	m.Public[0] = 9
	return appendInit(nil, m)
}

func seedResume() []byte {
	m := resumeMsg{Received: 12345, Fin: finFull, FinAt: 999, AckFin: true}
	m.ID[0], m.Nonce[0] = 1, 2
	return appendResume(nil, m)
}

func TestWireRoundTrip(t *testing.T) {
	im, _, err := parseInit(seedInit())
	if err != nil || im.Limits.Send != 4<<20 || im.Public[0] != 9 || im.Name != "laptop.example.org" || im.Flags != flagPSK {
		t.Fatalf("init %+v %v", im, err)
	}
	rm, _, err := parseResume(seedResume())
	if err != nil || rm.Received != 12345 || rm.Fin != finFull || !rm.AckFin || rm.FinAt != 999 {
		t.Fatalf("resume %+v %v", rm, err)
	}
	am := acceptMsg{Received: 7, Fin: finWrite, FinAt: 8}
	if got, _, err := parseAccept(appendAccept(nil, am)); err != nil || got != am {
		t.Fatalf("accept %+v %v", got, err)
	}
	fm := finMsg{Fin: finWrite, Count: 77}
	if got, _, err := parseFinMsg(appendFin(nil, fm)); err != nil || got != fm {
		t.Fatalf("fin %+v %v", got, err)
	}
	if _, _, err := parseFinMsg(appendFin(nil, finMsg{})); err == nil {
		t.Fatal("FIN without state accepted")
	}
	if _, _, err := parseInit(seedInit()[:initLen+3]); err == nil {
		t.Fatal("init with a truncated name accepted")
	}
	if st, err := parseState(seedState()); err != nil || string(st.Data) != "abc" || st.Alternates[0] != "198.51.100.1:7000" {
		t.Fatalf("state %+v %v", st, err)
	}
	if _, err := parseState(seedState()[:len(seedState())-1]); err == nil {
		t.Fatal("truncated state accepted")
	}
	if _, _, err := parseResume(seedResume()[:resumeLen-1]); err == nil {
		t.Fatal("short resume accepted")
	}
}

// fuzzParser checks that a parser never panics and that what it accepts re-encodes to the
// same bytes.
func fuzzParser[M any](f *testing.F, seeds [][]byte, parse func([]byte) (M, int, error), enc func([]byte, M) []byte) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, n, err := parse(b)
		if err != nil {
			return
		}
		if n > len(b) {
			t.Fatalf("n %d > len %d", n, len(b))
		}
		if again := enc(nil, m); !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoding %x, want %x", again, b[:n])
		}
	})
}

func FuzzParseInit(f *testing.F) {
	fuzzParser(f, [][]byte{seedInit()}, parseInit, appendInit)
}

func FuzzParseResume(f *testing.F) {
	fuzzParser(f, [][]byte{seedResume()}, parseResume, appendResume)
}

func FuzzParseInitOK(f *testing.F) {
	fuzzParser(f, [][]byte{appendInitOK(nil, initOKMsg{Limits: limits{1, 2}, Name: "srv-1.example"})}, parseInitOK, appendInitOK)
}

func FuzzParseConfirm(f *testing.F) {
	fuzzParser(f, [][]byte{appendConfirm(nil, [macLen]byte{7})}, parseConfirm, appendConfirm)
}

// seedState is a valid exported state.
func seedState() []byte {
	s := &rockState{Role: 1, Limit: 100, InLimit: 200, Sent: 10, Acked: 7, Recv: 5, Fin: finWrite, FinAt: 10,
		SuspendedAt: 1, Estab: 2, Policy: callbacksPolicy(), Network: "tcp", Dialed: "example.org:7000",
		Remote: "192.0.2.1:7000", PeerName: "srv.example", Alternates: []string{"198.51.100.1:7000"}, Data: []byte("abc")}
	s.ID[0] = 1
	return appendState(nil, s)
}

func FuzzParseState(f *testing.F) {
	f.Add(seedState())
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseState(b)
		if err != nil {
			return
		}
		if again := appendState(nil, s); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding %x, want %x", again, b)
		}
	})
}

func FuzzParseChallenge(f *testing.F) {
	fuzzParser(f, [][]byte{appendChallenge(nil, challengeMsg{})}, parseChallenge, appendChallenge)
}

func FuzzParseRefuse(f *testing.F) {
	fuzzParser(f, [][]byte{appendRefuse(nil, refuseUnknown)}, parseRefuse, appendRefuse)
}

func FuzzParseProof(f *testing.F) {
	fuzzParser(f, [][]byte{appendProof(nil, [macLen]byte{1})}, parseProof, appendProof)
}

func FuzzParseAccept(f *testing.F) {
	fuzzParser(f, [][]byte{appendAccept(nil, acceptMsg{Received: 1, Fin: finFull, FinAt: 2, AckFin: true})}, parseAccept, appendAccept)
}

func FuzzParseFin(f *testing.F) {
	fuzzParser(f, [][]byte{appendFin(nil, finMsg{Fin: finFull, Count: 3})}, parseFinMsg, appendFin)
}

func FuzzParseFinAck(f *testing.F) {
	fuzzParser(f, [][]byte{appendFinAck(nil, 42)}, parseFinAck, appendFinAck)
}

func callbacksPolicy() callbacks.Policy { return callbacks.Policy{}.WithDefaults() }
