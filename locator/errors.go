package locator

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/miekg/dns"
)

var (
	// ErrInvalidName is returned (wrapped) for a name that is not a valid host name inside the
	// zone: labels of letters, digits and hyphens (underscore allowed at the start of service
	// labels), at most 63 bytes each and 253 in all.
	ErrInvalidName = errors.New("locator: invalid name")
	// ErrTooManyRecords is returned (wrapped) when a registration, an answer or a zone holds
	// more records than its limit.
	ErrTooManyRecords = errors.New("locator: too many records")
	// ErrNoKey is returned by operations that must be signed when no TSIG key is configured.
	ErrNoKey = errors.New("locator: no TSIG key configured")
	// ErrUnsigned is returned (wrapped) when the reply to a signed request carries no TSIG
	// record: the reply cannot be trusted to come from the server that holds the key.
	ErrUnsigned = errors.New("locator: reply to a signed request is not signed")
	// ErrBadReply is returned (wrapped) for a reply that does not answer the question asked.
	ErrBadReply = errors.New("locator: malformed reply")
)

// Error is a failed exchange with a DNS server. It is a net.Error: Timeout reports whether
// the exchange ran out of time, in which case it wraps os.ErrDeadlineExceeded.
type Error struct {
	// Op is "update" or "query".
	Op string
	// Name is the name the exchange was about.
	Name string
	// Server is the address of the DNS server.
	Server string
	// Rcode is the server's response code (dns.RcodeRefused, ...), or -1 when there was no
	// usable reply.
	Rcode int
	// Err is the underlying error; nil when Rcode tells all.
	Err error
}

// Error returns "locator: update node1.example. at 127.0.0.1:53: REFUSED" and the like.
func (e *Error) Error() string {
	s := fmt.Sprintf("locator: %s %s at %s", e.Op, e.Name, e.Server)
	if e.Rcode >= 0 {
		rc := dns.RcodeToString[e.Rcode]
		if rc == "" {
			rc = fmt.Sprintf("rcode %d", e.Rcode)
		}
		s += ": " + rc
	}
	if e.Err != nil {
		s += ": " + strings.TrimPrefix(e.Err.Error(), "locator: ")
	}
	return s
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Timeout reports whether the exchange timed out.
func (e *Error) Timeout() bool { return errors.Is(e.Err, os.ErrDeadlineExceeded) }

// Temporary reports the same as Timeout (net.Error asks for it; it is deprecated).
func (e *Error) Temporary() bool { return e.Timeout() }
