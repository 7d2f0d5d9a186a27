//go:build linux

package netmon

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"testing"
)

// TestParserAgreesWithSyscall parses real kernel dumps with both this
// package's parser and the syscall package's, and compares.
func TestParserAgreesWithSyscall(t *testing.T) {
	for _, typ := range []int{syscall.RTM_GETLINK, syscall.RTM_GETADDR, syscall.RTM_GETROUTE} {
		b, err := syscall.NetlinkRIB(typ, syscall.AF_UNSPEC)
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := syscall.ParseNetlinkMessage(b)
		if err != nil {
			t.Fatal(err)
		}
		var want, got []string
		for _, sm := range msgs {
			attrs, err := syscall.ParseNetlinkRouteAttr(&sm)
			if err != nil {
				continue // NLMSG_DONE
			}
			var s string
			switch sm.Header.Type {
			case syscall.RTM_NEWLINK:
				ifi := sm.Data
				for _, a := range attrs {
					if a.Attr.Type == syscall.IFLA_IFNAME {
						s = linkString(int32(binary.NativeEndian.Uint32(ifi[4:])), binary.NativeEndian.Uint32(ifi[8:]), string(a.Value[:len(a.Value)-1]))
					}
				}
			case syscall.RTM_NEWADDR:
				var ip, local netip.Addr
				flags := uint32(sm.Data[2])
				for _, a := range attrs {
					switch a.Attr.Type {
					case syscall.IFA_ADDRESS:
						ip, _ = netip.AddrFromSlice(a.Value)
					case syscall.IFA_LOCAL:
						local, _ = netip.AddrFromSlice(a.Value)
					case ifaFlags:
						flags = binary.NativeEndian.Uint32(a.Value)
					}
				}
				if local.IsValid() {
					ip = local
				}
				s = addrString(binary.NativeEndian.Uint32(sm.Data[4:]), netip.PrefixFrom(ip, int(sm.Data[1])), flags)
			case syscall.RTM_NEWROUTE:
				var gw netip.Addr
				for _, a := range attrs {
					if a.Attr.Type == syscall.RTA_GATEWAY {
						gw, _ = netip.AddrFromSlice(a.Value)
					}
				}
				s = routeString(sm.Data[0], sm.Data[1], gw)
			}
			want = append(want, s)
		}
		for rest := b; len(rest) > 0; {
			m, n, err := parseMessage(rest)
			if err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
			switch m.Kind {
			case kindLink:
				got = append(got, linkString(m.Link.Index, m.Link.Flags, m.Link.Name))
			case kindAddr:
				got = append(got, addrString(m.Addr.Index, m.Addr.Prefix, m.Addr.Flags))
			case kindRoute:
				got = append(got, routeString(m.Route.Family, m.Route.DstLen, m.Route.Gateway))
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("dump %d:\n got %q\nwant %q", typ, got, want)
		}
		t.Logf("dump %d: %d messages agree", typ, len(got))
	}
}

func linkString(i int32, flags uint32, name string) string {
	return fmt.Sprintf("link %d %s %#x", i, name, flags)
}

func addrString(i uint32, p netip.Prefix, flags uint32) string {
	return fmt.Sprintf("addr %d %v %#x", i, p, flags)
}

func routeString(family, dstLen uint8, gw netip.Addr) string {
	return fmt.Sprintf("route %d /%d via %v", family, dstLen, gw)
}
