// Package inflight keeps the bytes a rock has written until its peer has consumed them.
//
// A Buffer is a queue of stream positions [Start, End) stored in fixed-size chunks. Chunks are
// taken from a pool as the buffer fills and returned as soon as every byte in them has been
// released, so an idle rock holds no chunk at all. A Buffer is not safe for concurrent use; the
// rock guards it with its own lock.
package inflight

import "sync"

// ChunkSize is the size of one chunk.
const ChunkSize = 64 << 10

var chunkPool = sync.Pool{New: func() any { return new([ChunkSize]byte) }}

// Buffer holds stream bytes [Start, End). The zero value is an empty buffer at position 0.
type Buffer struct {
	chunks []*[ChunkSize]byte
	spare  []*[ChunkSize]byte // recently freed chunks, reused first (still in the CPU caches)
	start  uint64             // position of the first held byte
	end    uint64             // position after the last held byte
	base   uint64             // position of chunks[0][0]
}

// At returns an empty buffer at position pos: the first byte appended is at pos. It serves a
// stream that carries on from a saved state.
func At(pos uint64) Buffer { return Buffer{start: pos, end: pos, base: pos} }

// Start returns the position of the oldest byte still held.
func (b *Buffer) Start() uint64 { return b.start }

// End returns the position after the newest byte.
func (b *Buffer) End() uint64 { return b.end }

// Len returns the number of bytes held.
func (b *Buffer) Len() int { return int(b.end - b.start) }

// Append adds p at the end.
func (b *Buffer) Append(p []byte) {
	for len(p) > 0 {
		off := int(b.end - b.base)
		ci, co := off/ChunkSize, off%ChunkSize
		if ci == len(b.chunks) {
			b.chunks = append(b.chunks, b.get())
		}
		n := copy(b.chunks[ci][co:], p)
		p = p[n:]
		b.end += uint64(n)
	}
}

// Release drops every byte before position upTo (clamped to [Start, End]) and frees chunks
// that no longer hold any byte.
func (b *Buffer) Release(upTo uint64) {
	upTo = min(max(upTo, b.start), b.end)
	b.start = upTo
	n := 0
	for n < len(b.chunks) && b.base+ChunkSize <= b.start {
		b.put(b.chunks[n])
		b.chunks[n] = nil
		b.base += ChunkSize
		n++
	}
	if n > 0 {
		b.chunks = append(b.chunks[:0], b.chunks[n:]...)
	}
	if b.start == b.end && len(b.chunks) > 0 {
		// Empty: start over at the current position so the next Append uses chunk 0 from its
		// beginning.
		for i := range b.chunks {
			b.put(b.chunks[i])
			b.chunks[i] = nil
		}
		b.chunks = b.chunks[:0]
		b.base = b.start
	}
	if len(b.chunks) == 0 {
		b.base = b.start
		b.chunks = nil
		b.releaseSpares() // empty: an idle buffer holds no memory
	}
}

func (b *Buffer) releaseSpares() {
	for _, c := range b.spare {
		chunkPool.Put(c)
	}
	b.spare = nil
}

// Truncate drops every byte at or after position to (clamped to [Start, End]).
func (b *Buffer) Truncate(to uint64) {
	to = min(max(to, b.start), b.end)
	b.end = to
	keep := int((b.end - b.base + ChunkSize - 1) / ChunkSize)
	if b.end == b.base {
		keep = 0
	}
	for i := keep; i < len(b.chunks); i++ {
		b.put(b.chunks[i])
		b.chunks[i] = nil
	}
	b.chunks = b.chunks[:keep]
	if keep == 0 {
		b.chunks = nil
		b.base = b.start
	}
}

// Slices appends to dst the held bytes [from, to) as slices of the buffer's chunks (no copy)
// and returns it. from and to are clamped to [Start, End]. The slices stay valid until the
// bytes are released or truncated.
func (b *Buffer) Slices(dst [][]byte, from, to uint64) [][]byte {
	from = min(max(from, b.start), b.end)
	to = min(max(to, from), b.end)
	for from < to {
		off := int(from - b.base)
		ci, co := off/ChunkSize, off%ChunkSize
		n := min(uint64(ChunkSize-co), to-from)
		dst = append(dst, b.chunks[ci][co:co+int(n)])
		from += n
	}
	return dst
}

// Reset empties the buffer and frees every chunk (an empty buffer holds none); the positions
// stay.
func (b *Buffer) Reset() {
	b.Release(b.end)
}

// maxSpare bounds the chunks a Buffer keeps for reuse.
const maxSpare = 8

func (b *Buffer) get() *[ChunkSize]byte {
	if n := len(b.spare); n > 0 {
		c := b.spare[n-1]
		b.spare[n-1] = nil
		b.spare = b.spare[:n-1]
		return c
	}
	return chunkPool.Get().(*[ChunkSize]byte)
}

func (b *Buffer) put(c *[ChunkSize]byte) {
	if len(b.spare) < maxSpare {
		b.spare = append(b.spare, c)
		return
	}
	chunkPool.Put(c)
}
