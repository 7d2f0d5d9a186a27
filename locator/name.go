package locator

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// DefaultService is the SRV service label prefixed to a registered name.
const DefaultService = "_rockudp._tcp"

// maxNameLen is the longest name accepted, in presentation form with the final dot.
const maxNameLen = 254

// CanonicalName returns name in canonical form (lower case, fully qualified) after checking
// it is a host name: labels of letters, digits, hyphens and underscores, 1 to 63 bytes each,
// at most 253 bytes in all. It wraps ErrInvalidName otherwise.
func CanonicalName(name string) (string, error) {
	if name == "" || name == "." {
		return "", fmt.Errorf("%w: %q is empty", ErrInvalidName, name)
	}
	c := dns.CanonicalName(name)
	if len(c) > maxNameLen {
		return "", fmt.Errorf("%w: %.40q... is longer than 253 bytes", ErrInvalidName, name)
	}
	for _, l := range strings.Split(c[:len(c)-1], ".") {
		if l == "" || len(l) > 63 {
			return "", fmt.Errorf("%w: %q has an empty or over-long label", ErrInvalidName, name)
		}
		for i := 0; i < len(l); i++ {
			b := l[i]
			if (b < 'a' || b > 'z') && (b < '0' || b > '9') && b != '-' && b != '_' {
				return "", fmt.Errorf("%w: %q has a byte %q outside [a-z0-9_-]", ErrInvalidName, name, b)
			}
		}
	}
	return c, nil
}

// inZone reports whether canonical name is zone or below it.
func inZone(name, zone string) bool {
	return name == zone || strings.HasSuffix(name, "."+zone) || zone == "."
}

// zoneName returns the canonical name under zone, checking it.
func zoneName(name, zone string) (string, error) {
	c, err := CanonicalName(name)
	if err != nil {
		return "", err
	}
	if zone != "" && !inZone(c, zone) {
		return "", fmt.Errorf("%w: %s is not in zone %s", ErrInvalidName, c, zone)
	}
	return c, nil
}

// srvName is the owner of the SRV record of name.
func srvName(service, name string) string { return service + "." + name }

// usableAddr reports whether a is an address worth publishing or dialing: a valid unicast
// address that is not unspecified. IPv4-mapped IPv6 addresses are unmapped first.
func usableAddr(a netip.Addr) (netip.Addr, bool) {
	a = a.Unmap()
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
		return a, false
	}
	if a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return a, false
	}
	return a, true
}
