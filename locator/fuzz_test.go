package locator

import (
	"bytes"
	"testing"
)

// FuzzParseZone feeds the zone-file loader arbitrary files: it must never panic, and what it
// accepts must survive a round trip through AppendZone unchanged.
func FuzzParseZone(f *testing.F) {
	f.Add([]byte(bindStyleZone))
	f.Add([]byte("rock.test. 60 IN SOA ns.rock.test. h.rock.test. 1 2 3 4 5\n"))
	lim := Limits{RecordsPerName: 8, Names: 64, FileSize: 64 << 10}
	f.Fuzz(func(t *testing.T, b []byte) {
		rrs, err := ParseZone(b, testZone, lim)
		if err != nil {
			return
		}
		out := AppendZone(nil, rrs)
		again, err := ParseZone(out, testZone, lim)
		if err != nil {
			t.Fatalf("re-parse of our own output: %v\n%s", err, out)
		}
		if !bytes.Equal(AppendZone(nil, again), out) {
			t.Fatalf("round trip changed the zone:\n%s\n%s", out, AppendZone(nil, again))
		}
	})
}

// FuzzParseKey feeds the key-file parser arbitrary files: no panic, and an accepted key
// written with AppendKey parses back to itself.
func FuzzParseKey(f *testing.F) {
	f.Add(AppendKey(nil, Key{Name: "rock-key.", Secret: "c2VjcmV0c2VjcmV0c2VjcmV0"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseKey(b)
		if err != nil {
			return
		}
		k2, err := ParseKey(AppendKey(nil, k))
		if err != nil || k2 != k {
			t.Fatalf("round trip: %+v -> %+v, %v", k, k2, err)
		}
	})
}
