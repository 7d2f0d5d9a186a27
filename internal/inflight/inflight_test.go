package inflight

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

func TestBufferRandomOps(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var b Buffer
	var model []byte // bytes [b.Start(), b.End())
	var pos uint64
	for i := 0; i < 20000; i++ {
		switch r.IntN(4) {
		case 0, 1:
			p := make([]byte, r.IntN(3*ChunkSize/2))
			for j := range p {
				p[j] = byte(pos + uint64(len(model)+j))
			}
			b.Append(p)
			model = append(model, p...)
		case 2:
			n := r.IntN(len(model) + 1)
			b.Release(pos + uint64(n))
			model = model[n:]
			pos += uint64(n)
		case 3:
			n := r.IntN(len(model) + 1)
			b.Truncate(pos + uint64(n))
			model = model[:n]
		}
		if b.Start() != pos || b.Len() != len(model) {
			t.Fatalf("step %d: start %d len %d, want %d %d", i, b.Start(), b.Len(), pos, len(model))
		}
		from := pos + uint64(r.IntN(len(model)+1))
		to := from + uint64(r.IntN(int(pos+uint64(len(model))-from)+1))
		got := bytes.Join(b.Slices(nil, from, to), nil)
		if !bytes.Equal(got, model[from-pos:to-pos]) {
			t.Fatalf("step %d: slices [%d,%d) differ", i, from, to)
		}
		if want := (len(model) + 2*ChunkSize - 1) / ChunkSize; len(b.chunks) > want {
			t.Fatalf("step %d: %d chunks for %d bytes", i, len(b.chunks), len(model))
		}
	}
	b.Reset()
	if len(b.chunks) != 0 || len(b.spare) != 0 {
		t.Fatal("chunks held after Reset")
	}
}
