package relay

import (
	"net"
	"testing"
)

// benchStream measures 64 KiB writes from a client dialed to addr to the
// server behind s, which reads everything.
func benchStream(b *testing.B, s *server, addr net.Addr) {
	const chunk = 64 << 10
	c := dial(b, addr)
	server := s.accept(b, patience)
	if server == nil {
		b.Fatal("no connection")
	}
	read := make(chan int64, 1)
	go func() {
		buf := make([]byte, chunk)
		var n int64
		for {
			k, err := server.Read(buf)
			n += int64(k)
			if err != nil {
				read <- n
				return
			}
		}
	}()
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.CloseWrite()
	if n := <-read; n != int64(b.N)*chunk {
		b.Fatalf("read %d bytes, wrote %d", n, int64(b.N)*chunk)
	}
	b.StopTimer()
}

func BenchmarkDirect(b *testing.B) {
	s := newServer(b)
	benchStream(b, s, s.ln.Addr())
}

func BenchmarkRelay(b *testing.B) {
	s := newServer(b)
	r := newRelay(b, s.addr(), nil)
	benchStream(b, s, r.Addr())
}

// BenchmarkRelayCopy forwards through userspace buffers instead of splice.
func BenchmarkRelayCopy(b *testing.B) {
	s := newServer(b)
	r := newRelay(b, s.addr(), &Config{DisableSplice: true})
	benchStream(b, s, r.Addr())
}

// BenchmarkRelayDelay forwards with a delay, through the delay queue.
func BenchmarkRelayDelay(b *testing.B) {
	s := newServer(b)
	r := newRelay(b, s.addr(), nil)
	r.SetDelay(1e6) // 1ms
	benchStream(b, s, r.Addr())
}
