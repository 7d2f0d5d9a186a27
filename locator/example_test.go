package locator_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/rockudp/rockudp/locator"
)

// An endpoint registers its addresses in the embedded server, and its peer looks them up.
func Example() {
	key, err := locator.GenerateKey("rockudp-key")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := locator.Listen("127.0.0.1:0", &locator.ServerConfig{Zone: "rock.test", Keys: []locator.Key{key}})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	cfg := &locator.Config{Server: srv.Addr().String(), Zone: "rock.test", Key: &key}
	ctx := context.Background()
	addrs := []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")}
	if err := locator.Register(ctx, cfg, "node1.rock.test", 7000, addrs); err != nil {
		log.Fatal(err)
	}

	found, err := locator.Lookup(ctx, &locator.Config{Server: srv.Addr().String()}, "node1.rock.test")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(found)
	// Output: [[2001:db8::10]:7000 192.0.2.10:7000]
}

// A Registrar keeps a name current. Without Addrs it publishes the host's addresses and
// follows them with a network monitor; with Addrs, as here, the caller calls Changed.
func ExampleRegistrar() {
	key, _ := locator.GenerateKey("rockudp-key")
	srv, err := locator.Listen("127.0.0.1:0", &locator.ServerConfig{Zone: "rock.test", Keys: []locator.Key{key}})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	cfg := &locator.Config{Server: srv.Addr().String(), Key: &key}
	registered := make(chan locator.RegistrarStatus, 1)
	r, err := locator.NewRegistrar(cfg, locator.Registration{
		Name:  "node1.rock.test",
		Port:  7000,
		Addrs: func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("192.0.2.10")} },
		OnUpdate: func(s locator.RegistrarStatus) {
			select { // never block the Registrar
			case registered <- s:
			default:
			}
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	st := <-registered
	fmt.Println(st.Addrs, st.Err)
	if err := r.Close(); err != nil { // removes the records
		log.Fatal(err)
	}
	// Output: [192.0.2.10] <nil>
}
