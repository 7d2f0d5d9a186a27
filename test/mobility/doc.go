// Package mobility holds the end-to-end mobility scenarios of rockudp: a rock
// between two network namespaces of a [netlab] lab streams data both ways
// while the lab changes the client's address, takes its link down, rebinds
// its NAT, stops the client process, makes the link lossy and slow, moves the
// client from IPv4 to IPv6, or disconnects it for minutes; a plain TCP
// connection beside the rock shows that the fault is real. Each scenario
// checks the SHA-256 of both streams at both ends and reports detection and
// recovery times through netlab.Report.
//
// The package has tests only. Each rock end runs as its own process inside
// its namespace (the test binary re-executed as an agent, see agent_test.go),
// because a rock re-dials from goroutines that would otherwise run in the
// machine's own namespace.
//
// Run it as root (CI=true makes missing root a failure instead of a skip):
//
//	sudo CI=true go test -race -run . ./test/mobility/
//
// ROCKUDP_SOAK=1 adds a 30-minute disconnection (give go test -timeout 60m).
// See docs/mobility.md for the measured figures.
//
// [netlab]: github.com/rockudp/rockudp/test/netlab
package mobility
