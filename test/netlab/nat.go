//go:build linux

package netlab

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// NAT is a router that hides the hosts behind it behind its public address,
// like a home router. Connect hosts to [NAT.Router] with private subnets
// (which must still come from the documentation ranges).
type NAT struct {
	router *Host
	uplink *Link

	gen int // index of the public port range in use; guarded by lab.mu
}

// portRanges are the NAT's public port ranges, used in turn. They lie below
// Linux's ephemeral ports, so a mapping never keeps the inside port.
var portRanges = [...]string{"10000-14999", "15000-19999", "20000-24999", "25000-29999"}

// NAT creates a NAT router called name, connected to upstream (usually a
// router) by a link with the public subnets (at most one per address family;
// the NAT takes the host address, see [Lab.Connect]). Everything it forwards
// out of that link is masqueraded to its public address and given a public
// port from 10000 to 29999; connections started from outside are dropped.
// NAT fails the test on error.
func (l *Lab) NAT(name string, upstream *Host, public ...netip.Prefix) *NAT {
	l.tb.Helper()
	r := l.Router(name)
	n := &NAT{router: r, uplink: l.Connect(r, upstream, public...)}
	l.mu.Lock()
	err := n.apply()
	l.mu.Unlock()
	if err != nil {
		l.tb.Fatalf("%v", err)
	}
	return n
}

// Router returns the NAT's router, to connect inside hosts to.
func (n *NAT) Router() *Host { return n.router }

// Uplink returns the link to the upstream router. Its impairments and
// Down/Up work as on any link.
func (n *NAT) Uplink() *Link { return n.uplink }

// Public returns the NAT's public address of the first public subnet.
func (n *NAT) Public() netip.Addr { return n.uplink.Addr() }

// Rebind gives every flow through the NAT a new public port on its next
// packet, keeping the public address: the NAT moves to its next port range
// and forgets all mappings, as when a carrier NAT times them out. A UDP flow
// carries on from the new port; a TCP connection is reset by the peer, which
// does not know the new port.
func (n *NAT) Rebind() error {
	l := n.router.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.alive(); err != nil {
		return err
	}
	n.gen++
	if err := n.apply(); err != nil {
		return err
	}
	if err := n.router.Do(flushConntrack); err != nil {
		return err
	}
	l.logf("NAT %s: mappings forgotten, public ports now %s", n.router.name, portRanges[n.gen%len(portRanges)])
	return nil
}

// SetPublic changes the NAT's public address from the current one of the
// same family to public, as a new DHCP lease on its uplink does (see
// [Link.ChangeAddr]), and forgets all mappings: flows continue from the new
// address, and TCP connections die as with Rebind.
func (n *NAT) SetPublic(public netip.Prefix) error {
	var old netip.Prefix
	for _, p := range n.uplink.Prefixes() {
		if p.Addr().Is4() == public.Addr().Is4() {
			old = p
		}
	}
	if !old.IsValid() {
		return fmt.Errorf("netlab: NAT %s has no public address of the family of %v", n.router.name, public)
	}
	if err := n.uplink.ChangeAddr(old, public); err != nil {
		return err
	}
	// Masquerading already forgets mappings of a deleted address; flush
	// anyway, so the rule does not depend on that.
	return n.router.Do(flushConntrack)
}

// apply replaces the NAT's nftables table (lab.mu held).
func (n *NAT) apply() error {
	script := fmt.Sprintf(`add table inet nat
delete table inet nat
table inet nat {
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname %[1]q meta l4proto { tcp, udp } masquerade to :%[2]s
		oifname %[1]q masquerade
	}
	chain inbound {
		type filter hook forward priority filter; policy accept;
		iifname %[1]q ct state new drop
	}
}
`, n.uplink.hostIf, portRanges[n.gen%len(portRanges)])
	_, err := command(script, "ip", "netns", "exec", n.router.ns, "nft", "-f", "-")
	return err
}

// ipctnlMsgCtDelete is IPCTNL_MSG_CT_DELETE (linux/netfilter/nfnetlink_conntrack.h).
const ipctnlMsgCtDelete = 2

// flushConntrack deletes every IPv4 and IPv6 connection tracking entry of the
// calling thread's namespace, over ctnetlink (the conntrack tool may be
// missing; nft cannot do it).
func flushConntrack() error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("netlab: ctnetlink: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
		return fmt.Errorf("netlab: ctnetlink: %w", err)
	}
	kernel := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	for seq, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		// nlmsghdr + nfgenmsg, no attributes: delete all of family fam.
		msg := make([]byte, unix.SizeofNlMsghdr+4) // + struct nfgenmsg: family, version, res_id
		binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
		binary.NativeEndian.PutUint16(msg[4:], unix.NFNL_SUBSYS_CTNETLINK<<8|ipctnlMsgCtDelete)
		binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
		binary.NativeEndian.PutUint32(msg[8:], uint32(seq+1))
		msg[unix.SizeofNlMsghdr] = fam
		msg[unix.SizeofNlMsghdr+1] = unix.NFNETLINK_V0
		if err := unix.Sendto(fd, msg, 0, kernel); err != nil {
			return fmt.Errorf("netlab: ctnetlink flush: %w", err)
		}
		if err := readAck(fd, uint32(seq+1)); err != nil {
			return fmt.Errorf("netlab: ctnetlink flush: %w", err)
		}
	}
	return nil
}

// readAck waits for the netlink acknowledgement of request seq.
func readAck(fd int, seq uint32) error {
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
				return syscall.Errno(-errno)
			}
			return nil
		}
	}
}
