package edp_test

import (
	"context"
	"fmt"
	"io"
	"net"

	"github.com/rockudp/rockudp/edp"
)

func Example() {
	// An enhancement is a name, a version and optional hooks.
	rocks := edp.Enhancement{Name: "rocks", Version: 1}

	// Server: wrap any TCP listener. Probes never come out of Accept; ordinary
	// clients do, untouched.
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	ln := edp.NewListener(inner, &edp.Config{Enhancements: []edp.Enhancement{rocks}})
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()

	// Client: probe, negotiate, and get a connection (or an ordinary one).
	cache := edp.NewCache(0)
	c, err := edp.Dial(context.Background(), "tcp", ln.Addr().String(),
		&edp.Config{Enhancements: []edp.Enhancement{rocks}, Cache: cache})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	r := c.Result()
	fmt.Println("enhanced:", r.Enhanced, "agreed:", r.Agreed[0].ID, "server offers:", r.Offered)
	// Output: enhanced: true agreed: rocks/1 server offers: [rocks/1]
}
