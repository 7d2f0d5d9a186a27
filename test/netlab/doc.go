// Package netlab builds throw-away networks of Linux network namespaces for
// end-to-end tests: hosts and routers joined by veth pairs, with knobs to
// change addresses, move hosts between subnets, take links down, add delay,
// loss and rate limits, block UDP or all traffic, and put hosts behind a NAT
// whose public mapping can be changed. It needs root, iproute2 and nftables.
//
// A test builds its network and then talks through it:
//
//	lab := netlab.New(t) // skips without root (fails with CI=true)
//	r := lab.Router("r")
//	client, server := lab.Host("client"), lab.Host("server")
//	cl := lab.Connect(client, r, netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8:1::/64"))
//	lab.Connect(server, r, netip.MustParsePrefix("198.51.100.0/24"))
//	ln, _ := server.Listen("tcp", ":7000")
//	c, _ := client.Dial(ctx, "tcp", "198.51.100.2:7000")
//	cl.SetDelay(50 * time.Millisecond)
//	cl.ChangeAddr(netip.MustParsePrefix("192.0.2.2/24"), netip.MustParsePrefix("192.0.2.77/24"))
//
// The constructors (New, Host, Router, Connect, NAT) fail the test on error:
// they run while the test sets up. The methods that change a running network
// (those of [Link] and [NAT]) return errors instead, so that any goroutine
// may call them, for instance while a transfer is under way.
//
// # Topology
//
// Every [Link] is a point-to-point veth pair between a host and a router, with
// its own subnets: the router end takes the first address of each subnet and
// the host end the address given (or the second one). The first link of each
// address family on a host becomes its default route. Routers forward IPv4 and
// IPv6; routes between several routers are the test's business ([Host.Run]
// with "ip route add ...").
//
// Every address must lie in the documentation ranges 192.0.2.0/24,
// 198.51.100.0/24, 203.0.113.0/24 or 2001:db8::/32. Lab namespaces have no link
// to the machine's own namespace, so no lab packet can leave the lab.
// Duplicate address detection is off, so IPv6 addresses work at once.
//
// # Code inside a namespace
//
// [Host.Command] and [Host.Run] run programs with "ip netns exec". [Host.Do]
// runs a Go function on an OS thread switched into the namespace: sockets
// created by the function belong to the namespace for their whole life and may
// be used from any goroutine afterwards, but goroutines the function starts do
// not run in the namespace. [Host.Listen], [Host.ListenPacket] and [Host.Dial]
// are built on Do; give Dial literal IP addresses.
//
// # Impairments
//
// [Link.SetDelay], [Link.SetLoss], [Link.SetRate], [Link.BlockUDP] and
// [Link.BlockAll] act on the traffic crossing a link, in both directions.
// Loss and blocking are nftables rules on the router end of the link (loss
// uses "numgen random", so it is independent per packet). The rate limit is a
// tbf qdisc on both ends.
//
// Delay uses tc netem (a qdisc on both ends) when the kernel has it. Many
// small kernels, this project's CI VM among them, lack netem; then netlab
// runs a delay line of its own: the router end's traffic is policy-routed
// through a TUN device that a goroutine reads, holds for the delay, and
// writes back. The delay line delays only traffic the router forwards, not
// traffic to or from the router itself; it keeps packets in order, holds at
// most 4096 packets (more are dropped, like netem's queue limit), and adds
// one hop (TTL) to the path. Setting NETLAB_NETEM=off forces the delay line
// even where netem works.
//
// # NAT
//
// [Lab.NAT] creates a router that masquerades everything it forwards out of
// its uplink to its public address, drops connections started from outside,
// and picks public ports from one of four ranges between 10000 and 29999.
// [NAT.Rebind] moves to the next port range and forgets every mapping (the
// conntrack table is flushed over ctnetlink), so each flow's next packet
// gets a new public port: UDP flows carry on from the new port, TCP peers
// answer the unknown port with a reset. [NAT.SetPublic] gives the NAT a new
// public address the way a new DHCP lease does.
//
// # Cleanup and parallel runs
//
// Namespaces are named "netlab-RUN-HOST" with a random RUN per [Lab]; device
// names only need to be unique inside their namespace, so parallel runs never
// collide. When the test ends, also on failure, t.Cleanup stops the delay
// lines, kills every process left in the lab's namespaces and deletes them
// (the veth pairs go with them). SIGINT and SIGTERM run the same cleanup
// before the process dies. A run that was killed outright leaves namespaces
// behind; [Sweep], which [New] calls, removes those whose owner is gone: each
// live lab holds a lock on /run/netlab/RUN.lock.
//
// # Reports
//
// [Report] collects one row per scenario (detection and recovery times, bytes
// replayed and verified) and writes JSON and a Markdown table to
// $NETLAB_REPORT_DIR (default: rockudp-netlab in the temporary directory).
package netlab
