//go:build !linux

package netmon

import "errors"

// newOSMon has no event source outside Linux: New polls.
func newOSMon(Config) (osMon, error) {
	return nil, errors.New("netmon: no netlink on this OS")
}
