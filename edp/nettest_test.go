package edp

import (
	"net"
	"testing"

	"golang.org/x/net/nettest"
)

// TestConnConformance runs the net.Conn conformance suite over an enhanced pair
// whose Init hooks wrap both ends.
func TestConnConformance(t *testing.T) {
	var rec recorder
	enh := testEnh(&rec, "xor", 1, 0x5a, false)
	srv := NewListener(listenTCP(t), serverCfg(enh))
	t.Cleanup(func() { srv.Close() })
	cache := NewCache(0)
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		ctx := testCtx(t)
		type res struct {
			c   *Conn
			err error
		}
		ch := make(chan res, 1)
		go func() {
			c, err := srv.AcceptConn()
			ch <- res{c, err}
		}()
		c1, err = Dial(ctx, "tcp", srv.Addr().String(), &Config{Cache: cache, Enhancements: []Enhancement{enh}})
		if err != nil {
			return nil, nil, nil, err
		}
		r := <-ch
		if r.err != nil {
			c1.Close()
			return nil, nil, nil, r.err
		}
		return c1, r.c, func() { c1.Close(); r.c.Close() }, nil
	})
}
