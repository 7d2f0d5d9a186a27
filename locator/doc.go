// Package locator finds rocks whose peers have moved, through the DNS.
//
// An endpoint publishes its current addresses under a DNS name by RFC 2136 dynamic update,
// signed with TSIG (hmac-sha256): Register replaces the name's A and AAAA records and an SRV
// record for its port, with a short TTL. A Registrar keeps a name current: it registers at
// start, again at once whenever the local addresses change, again before the TTL runs out, and
// removes the records when it is closed; by default it follows the host's addresses with a
// network monitor (netlink on Linux). Lookup turns a name back into candidate "host:port"
// addresses (SRV, then A/AAAA); a Locator wraps Lookup as a callbacks.Locator for a rock. A
// rock end announces its name to its peer (tcprocks.Config.Name), so a Locator given only the
// DNS server finds a peer that moved.
//
// The DNS records for name node1.example. and port 7000 are
//
//	node1.example.                30 IN A     192.0.2.10
//	node1.example.                30 IN AAAA  2001:db8::10
//	_rockudp._tcp.node1.example.  30 IN SRV   0 0 7000 node1.example.
//
// Any RFC 2136 server with TSIG works; BIND 9 is tested. Server is an embedded authoritative
// server for one zone: it keeps the zone in memory, persists it as an RFC 1035 master file
// after every change (so a restart loses nothing, and BIND can load the file), accepts only
// TSIG-signed updates, answers A, AAAA, SRV, TXT, SOA and NS queries over UDP and TCP, and
// serves TSIG-signed zone transfers (AXFR) to ordinary secondaries, which it NOTIFYs of
// changes.
//
// DNS answers are hints, never trust: a rock authenticates whatever peer it reaches at a
// located address. Lookup still checks every answer (owner names, types, counts, addresses)
// and bounds what it accepts.
package locator
