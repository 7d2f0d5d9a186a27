package edp

import (
	"fmt"
	"net"
	"sync"
	"time"
)

// Conn is a connection that went through enhancement detection, enhanced or ordinary.
// It implements net.Conn; reads and writes go through the Init hooks' wrappers, if any.
// On the server, an ordinary Conn first returns the bytes the classifier read.
type Conn struct {
	conn   net.Conn // what the application talks to (wrapped by Init hooks)
	raw    net.Conn // the TCP connection
	result Result

	mu     sync.Mutex
	prefix []byte // server: bytes read while classifying, returned first

	// Counters for tests and benchmarks (client): TCP connects and round trips the
	// Dial waited for, probe included.
	connects, roundTrips int
}

var _ net.Conn = (*Conn)(nil)

// Result returns the outcome of enhancement detection for this connection.
func (c *Conn) Result() Result { return c.result }

// NetConn returns the underlying connection (the TCP connection, beneath any
// wrapper an Init hook added).
func (c *Conn) NetConn() net.Conn { return c.raw }

// Read reads data from the connection.
func (c *Conn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 {
			c.prefix = nil
		}
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.conn.Read(b)
}

// Write writes data to the connection.
func (c *Conn) Write(b []byte) (int, error) { return c.conn.Write(b) }

// Close closes the connection.
func (c *Conn) Close() error { return c.conn.Close() }

// CloseWrite shuts down the writing side, if the connection supports it.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("edp: CloseWrite not supported by %T", c.conn)
}

// LocalAddr returns the local network address.
func (c *Conn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// RemoteAddr returns the remote network address.
func (c *Conn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }
