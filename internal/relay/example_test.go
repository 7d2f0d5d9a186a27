package relay_test

import (
	"fmt"
	"io"
	"net"

	"github.com/rockudp/rockudp/internal/relay"
)

// A relay in front of a server, cutting the connection that goes through it.
func Example() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c) // echo until the relay's FIN
		c.Close()
	}()

	r, err := relay.New(ln.Addr().String(), nil)
	if err != nil {
		panic(err)
	}
	defer r.Close()

	c, err := net.Dial("tcp", r.Addr().String())
	if err != nil {
		panic(err)
	}
	defer c.Close()
	buf := make([]byte, 5)
	c.Write([]byte("hello"))
	io.ReadFull(c, buf)
	fmt.Printf("echo: %s\n", buf)

	r.Cut()
	_, err = c.Read(buf)
	fmt.Println("after Cut:", err)
	fmt.Println("faults:", r.Stats().Faults)
	// Output:
	// echo: hello
	// after Cut: EOF
	// faults: 1
}
