// Package edp implements the Enhancement Detection Protocol of "Reliable Network
// Connections" (section 3): an enhanced client finds out whether a server is enhanced
// too, negotiates enhancements such as rocks/1 by name and version, runs their
// initialisation, and falls back to an ordinary TCP connection when the server is not
// enhanced — without disturbing ordinary clients or servers.
//
// The client side is [Dial] (or a [Dialer]): it probes the server (connect, half-close,
// read the 1024-byte announcement), remembers the answer in an optional [Cache], then
// opens the connection it returns, sends the announcement back together with its offer
// in one write and reads the server's agreement: a cached enhanced Dial costs the TCP
// connect plus one round trip. Against an ordinary server Dial returns a fresh, untouched
// ordinary connection and says why in [Result.Reason].
//
// The server side is [NewListener], a wrapper like tls.NewListener that classifies every
// accepted connection concurrently: probes are answered and never reach the
// application, enhanced clients are negotiated with, and ordinary clients reach the
// application with their first bytes intact.
//
// Enhancements plug in as [Enhancement] values (name, version, Hello and Init hooks);
// edp knows nothing about what they do. The wire format is specified in
// docs/protocol.md, section 1.
package edp
