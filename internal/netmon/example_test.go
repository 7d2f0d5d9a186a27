package netmon_test

import (
	"log"
	"net/netip"

	"github.com/rockudp/rockudp/internal/netmon"
)

// A connection suspends when its local address goes away and retries at
// once when the network may have come back.
func ExampleMonitor() {
	m, err := netmon.New(nil)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	local := netip.MustParseAddr("192.0.2.2")
	unregister := m.RegisterChangeCallback(func(d *netmon.ChangeDelta) {
		if d.InterfaceIPDisappeared(local) {
			// suspend now
		}
		if d.AddressAppeared() {
			// retry now
		}
	})
	defer unregister()
	if err := m.Start(); err != nil {
		log.Fatal(err)
	}
}
