// Package forward joins two connections into one stream each way, the way the paper's
// rockd joins a rock to an ordinary TCP connection: bytes are copied in both directions,
// a half-close on one side becomes a half-close on the other, and both are closed when
// both directions have ended.
package forward

import (
	"errors"
	"io"
	"net"
	"sync"
)

// closeWriter is a connection whose writing side can be shut down alone
// (*net.TCPConn, *tcprocks.Conn, *edp.Conn).
type closeWriter interface {
	CloseWrite() error
}

// Counts are the bytes Join copied in each direction.
type Counts struct {
	AToB, BToA int64
}

// Join copies a→b and b→a until both directions have ended, then closes both
// connections. When one side reaches EOF, Join half-closes the other side's writing
// end (if it supports CloseWrite) so that it sees EOF too; when a copy fails, both
// connections are closed at once. The returned error is the first copy error, or nil
// when both directions ended with EOF.
func Join(a, b net.Conn) (Counts, error) {
	var (
		n    Counts
		wg   sync.WaitGroup
		once sync.Once
		err  error
	)
	fail := func(e error) {
		once.Do(func() {
			err = e
			a.Close()
			b.Close()
		})
	}
	pipe := func(dst, src net.Conn, count *int64) {
		defer wg.Done()
		c, e := io.Copy(dst, src)
		*count = c
		if e != nil && !errors.Is(e, net.ErrClosed) {
			fail(e)
			return
		}
		if cw, ok := dst.(closeWriter); ok {
			if e := cw.CloseWrite(); e != nil && !errors.Is(e, net.ErrClosed) {
				fail(e)
			}
			return
		}
		fail(nil) // no half-close: end both directions
	}
	wg.Add(2)
	go pipe(b, a, &n.AToB)
	go pipe(a, b, &n.BToA)
	wg.Wait()
	a.Close()
	b.Close()
	return n, err
}
