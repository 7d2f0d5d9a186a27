package netmon

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

func TestParseRoundTrip(t *testing.T) {
	link := linkMsg{Index: 7, Flags: upFlags, Name: "eth0"}
	addr4 := addrMsg{Index: 7, Prefix: netip.MustParsePrefix("192.0.2.9/24"), Flags: 0x80, Scope: 0}
	addr6 := addrMsg{Index: 7, Prefix: netip.MustParsePrefix("2001:db8::9/64"), Flags: ifaFTentative | 0x200}
	route := routeMsg{Family: afInet6, Table: 1000, Type: rtnUnicast, Gateway: netip.MustParseAddr("fe80::1"), Oif: 7}

	var b []byte
	b = appendLink(b, rtmNewLink, nlmFMulti, 5, link)
	b = appendAddr(b, rtmNewAddr, 0, 6, addr4)
	b = appendAddr(b, rtmDelAddr, 0, 7, addr6)
	b = appendRoute(b, rtmNewRoute, 0, 8, route)
	b = appendDone(b, 9)

	var got []message
	for len(b) > 0 {
		m, n, err := parseMessage(b)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
		b = b[n:]
	}
	if len(got) != 5 {
		t.Fatalf("parsed %d messages, want 5", len(got))
	}
	if got[0].Kind != kindLink || got[0].Link != link || got[0].Seq != 5 || got[0].Flags != nlmFMulti {
		t.Errorf("link: %+v", got[0])
	}
	if got[1].Kind != kindAddr || got[1].Addr != addr4 {
		t.Errorf("addr4: %+v, want %+v", got[1].Addr, addr4)
	}
	if got[2].Kind != kindAddr || got[2].Type != rtmDelAddr || got[2].Addr != addr6 || got[2].Addr.usable() {
		t.Errorf("addr6: %+v, want %+v (IFA_FLAGS wins over the 8-bit flags)", got[2].Addr, addr6)
	}
	if got[3].Kind != kindRoute || got[3].Route != route || got[3].Route.isDefault() {
		t.Errorf("route: %+v (table 1000 is not main)", got[3].Route)
	}
	if got[4].Kind != kindDone || got[4].Seq != 9 {
		t.Errorf("done: %+v", got[4])
	}
}

// TestParsePrefersLocal checks IPv4 point-to-point addresses: IFA_ADDRESS
// is the peer, IFA_LOCAL ours.
func TestParsePrefersLocal(t *testing.T) {
	local, peer := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	attrs := appendAttr(appendAttr(nil, ifaAddress, peer.AsSlice()), ifaLocal, local.AsSlice())
	b := appendHeader(nil, rtmNewAddr, 0, 0, ifaddrLen+len(attrs))
	b = append(b, afInet, 32, 0, 0, 3, 0, 0, 0)
	b = append(b, attrs...)
	binary.NativeEndian.PutUint32(b[nlmsgHdrLen+4:], 3)
	m, _, err := parseMessage(b)
	if err != nil || m.Addr.Prefix != netip.PrefixFrom(local, 32) {
		t.Errorf("got %v, %v; want %v", m.Addr.Prefix, err, local)
	}
}

func TestParseMalformed(t *testing.T) {
	valid := appendAddr(nil, rtmNewAddr, 0, 0, addrMsg{Index: 2, Prefix: netip.MustParsePrefix("192.0.2.9/24")})
	withLen := func(b []byte, off int, l uint16) []byte {
		b = append([]byte(nil), b...)
		binary.NativeEndian.PutUint16(b[off:], l)
		return b
	}
	firstAttr := nlmsgHdrLen + ifaddrLen
	// The final attribute is 5 bytes long and unpadded: the message ends
	// with it. syscall.ParseNetlinkRouteAttr panics on this one.
	unpadded := appendHeader(nil, rtmNewLink, 0, 0, ifinfoLen+5)
	unpadded = append(unpadded, make([]byte, ifinfoLen)...)
	unpadded = append(unpadded, 5, 0, 99, 0, 1)
	name16 := appendLink(nil, rtmNewLink, 0, 0, linkMsg{Index: 1, Name: "0123456789abcdef"})
	badPrefix := append([]byte(nil), valid...)
	badPrefix[nlmsgHdrLen+1] = 33

	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, errShort},
		{"short header", valid[:15], errShort},
		{"length below header", withLen(valid, 0, 15), errBadLength},
		{"length beyond buffer", valid[:len(valid)-1], errBadLength},
		{"short payload", append(appendHeader(nil, rtmNewAddr, 0, 0, 4), 2, 24, 0, 0), errShort},
		{"short link payload", appendHeader(nil, rtmNewLink, 0, 0, 0), errShort},
		{"short route payload", append(appendHeader(nil, rtmNewRoute, 0, 0, 11), make([]byte, 11)...), errShort},
		{"short error payload", appendHeader(nil, nlmsgError, 0, 0, 0), errShort},
		{"attribute length below header", withLen(valid, firstAttr, 3), errBadAttr},
		{"attribute beyond message", withLen(valid, firstAttr, 200), errBadAttr},
		{"address of wrong length", withLen(valid, firstAttr, 7), errBadAddr},
		{"prefix too long", badPrefix, errBadAddr},
		{"interface name too long", name16, errBadName},
	} {
		if _, n, err := parseMessage(tc.b); !errors.Is(err, tc.want) || n != 0 {
			t.Errorf("%s: n=%d err=%v, want %v", tc.name, n, err, tc.want)
		}
	}
	// The unpadded final attribute is well formed.
	if _, n, err := parseMessage(unpadded); err != nil || n != len(unpadded) {
		t.Errorf("unpadded: n=%d err=%v", n, err)
	}
	// Families other than IPv4 and IPv6 are ignored, not errors.
	other := append([]byte(nil), valid...)
	other[nlmsgHdrLen] = 7
	if m, _, err := parseMessage(other); err != nil || m.Kind != kindOther {
		t.Errorf("other family: %+v %v", m, err)
	}
}

func TestClassify(t *testing.T) {
	up := linkMsg{Index: 3, Name: "x", Flags: upFlags}
	noCarrier := linkMsg{Index: 3, Name: "x", Flags: upFlags, HasCarrier: true}
	defaultRoute := routeMsg{Table: rtTableMain, Type: rtnUnicast}
	for _, tc := range []struct {
		name             string
		b                []byte
		relevant, urgent bool
	}{
		{"new addr", newAddrEvent(v4b), true, false},
		{"tentative addr", appendAddr(nil, rtmNewAddr, 0, 0, addrMsg{Prefix: v6, Flags: ifaFTentative}), true, true},
		{"del addr", appendAddr(nil, rtmDelAddr, 0, 0, addrMsg{Prefix: v6}), true, true},
		{"link up", appendLink(nil, rtmNewLink, 0, 0, up), true, false},
		{"link without carrier", appendLink(nil, rtmNewLink, 0, 0, noCarrier), true, true},
		{"link down", appendLink(nil, rtmNewLink, 0, 0, linkMsg{Index: 3, Flags: iffRunning}), true, true},
		{"del link", appendLink(nil, rtmDelLink, 0, 0, up), true, true},
		{"new default route", appendRoute(nil, rtmNewRoute, 0, 0, defaultRoute), true, false},
		{"del default route", appendRoute(nil, rtmDelRoute, 0, 0, defaultRoute), true, true},
		{"prefix route", appendRoute(nil, rtmDelRoute, 0, 0, routeMsg{DstLen: 24, Table: rtTableMain, Type: rtnUnicast}), false, false},
		{"local table", appendRoute(nil, rtmNewRoute, 0, 0, routeMsg{Table: 255, Type: rtnUnicast}), false, false},
		{"route then addr", appendAddr(appendRoute(nil, rtmNewRoute, 0, 0, routeMsg{DstLen: 8}), rtmNewAddr, 0, 0, addrMsg{Prefix: v6}), true, false},
		{"new then del", appendAddr(newAddrEvent(v4b), rtmDelAddr, 0, 0, addrMsg{Prefix: v6}), true, true},
		{"garbage", []byte{1, 2, 3}, true, true},
		{"empty", nil, false, false},
	} {
		if relevant, urgent := classify(tc.b); relevant != tc.relevant || urgent != tc.urgent {
			t.Errorf("%s: classify = %v, %v; want %v, %v", tc.name, relevant, urgent, tc.relevant, tc.urgent)
		}
	}
}

func TestStateFromDump(t *testing.T) {
	n := baseNet()
	n.links = append(n.links, linkMsg{Index: 3, Name: "eth1", Flags: iffUp}) // no carrier
	n.addrs = append(n.addrs,
		addrMsg{Index: 3, Prefix: netip.MustParsePrefix("198.51.100.2/24")},
		addrMsg{Index: 2, Prefix: v6, Flags: ifaFTentative},
		addrMsg{Index: 9, Prefix: netip.MustParsePrefix("203.0.113.1/24")}, // its link went away
	)
	st, err := stateFromDump(n.dump())
	if err != nil {
		t.Fatal(err)
	}
	want := "lo(up)[127.0.0.1/8] eth0(up)[192.0.2.2/24]tentative[2001:db8:1::2/64] eth1(down)[198.51.100.2/24] default(ipv4) via 192.0.2.1 dev eth0"
	if st.String() != want {
		t.Errorf("state\n%v\nwant\n%v", &st, want)
	}
	if got := st.Addrs(); len(got) != 2 {
		t.Errorf("Addrs = %v, want lo's and eth0's", got)
	}
	if _, err := stateFromDump(n.dump()[:30]); err == nil {
		t.Error("truncated dump parsed")
	}
}

// FuzzParseMessage checks that the parser never panics, never reads past
// its input, and that what it accepts encodes back to the same message.
func FuzzParseMessage(f *testing.F) {
	f.Add(appendLink(nil, rtmNewLink, 0, 0, linkMsg{Index: 2, Flags: upFlags, Name: "eth0"}))
	f.Add(newAddrEvent(v4b))
	f.Add(appendAddr(nil, rtmDelAddr, 0, 0, addrMsg{Index: 2, Prefix: v6, Flags: ifaFTentative}))
	f.Add(appendRoute(nil, rtmNewRoute, 0, 0, baseNet().routes[0]))
	f.Add(appendDone(nil, 1))
	f.Add(baseNet().dump())
	f.Fuzz(func(t *testing.T, b []byte) {
		classify(b)
		stateFromDump(b)
		m, n, err := parseMessage(b)
		if err != nil {
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("n = %d for %d bytes", n, len(b))
		}
		var again []byte
		switch m.Kind {
		case kindLink:
			again = appendLink(nil, m.Type, m.Flags, m.Seq, m.Link)
		case kindAddr:
			again = appendAddr(nil, m.Type, m.Flags, m.Seq, m.Addr)
		case kindRoute:
			again = appendRoute(nil, m.Type, m.Flags, m.Seq, m.Route)
		default:
			return
		}
		m.Pid = 0 // the encoders write the kernel's port ID
		m2, _, err := parseMessage(again)
		if err != nil || m2 != m {
			t.Fatalf("re-encoded %+v parses as %+v, %v", m, m2, err)
		}
	})
}

func TestDumpRequest(t *testing.T) {
	for typ, size := range map[uint16]int{rtmGetLink: ifinfoLen, rtmGetAddr: ifaddrLen, rtmGetRoute: rtmsgLen} {
		b := appendDumpRequest(nil, typ, 42)
		m, n, err := parseMessage(b)
		if err != nil || n != nlmsgHdrLen+size || len(b) != n || m.Type != typ || m.Seq != 42 || m.Flags != nlmFRequest|nlmFDump {
			t.Errorf("request %d: %+v, n=%d, err=%v", typ, m, n, err)
		}
	}
}
