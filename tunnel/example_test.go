package tunnel_test

import (
	"fmt"
	"net"
	"time"

	"github.com/rockudp/rockudp/tunnel"
)

// A tunnel over a TCP connection to a UDP echo service; over a rock it is
// the same, with tcprocks.Dial and tcprocks.Listen.
func Example() {
	// The UDP service the server end sends to.
	svc, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer svc.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := svc.ReadFrom(buf)
			if err != nil {
				return
			}
			svc.WriteTo(buf[:n], from)
		}
	}()

	// The server end: a Server for every connection accepted.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	a, _ := tunnel.Serve(l, svc.LocalAddr().String(), nil)
	defer a.Close()

	// The client end: local applications send to its UDP socket.
	rock, _ := net.Dial("tcp", l.Addr().String())
	udp, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	c, _ := tunnel.NewClient(rock, udp, &tunnel.Config{MaxAge: time.Second})
	defer c.Close()

	app, _ := net.DialUDP("udp", nil, c.LocalAddr().(*net.UDPAddr))
	defer app.Close()
	app.Write([]byte("hello through the tunnel"))
	buf := make([]byte, 100)
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, _ := app.Read(buf)
	fmt.Println(string(buf[:n]))
	fmt.Println(c.Stats().DatagramsIn, "datagram in")
	// Output:
	// hello through the tunnel
	// 1 datagram in
}
