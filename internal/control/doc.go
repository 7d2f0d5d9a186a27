// Package control is a rock's control channel: a QUIC connection (quic-go)
// bound to the rock's control key, carrying heartbeats and control messages.
//
// The server side listens on the UDP twin of the rock listener's TCP port
// (Listen); the client side is one Client per process, whose Dials share one
// quic.Transport on an ephemeral dual-stack UDP socket.
//
// TLS runs with a throwaway self-signed certificate that nobody verifies.
// Authentication is the channel binding: right after the QUIC handshake the
// client sends the rock's connection ID and HMAC-SHA256(key, label_client ||
// exporter), where exporter is the TLS exporter value of this very session;
// the server checks it with the key of that ID and answers with
// HMAC-SHA256(key, label_server || exporter). A man in the middle that relays
// two TLS sessions sees two different exporter values and cannot pass. Only
// channels on which both proofs succeeded are returned by Accept and Dial.
//
// Once started, a Channel sends a heartbeat datagram every Interval carrying
// the count of bytes the local application has consumed, reports the peer's
// count to OnHeartbeat, and calls OnDead when Misses intervals pass without a
// heartbeat. Send carries reliable, ordered control messages on a stream.
//
// Per channel, beyond quic-go's own two goroutines, the package runs two: the
// heartbeat loop (which also receives datagrams and runs the callbacks) and
// the control stream reader. Timers are runtime timers (time.AfterFunc), which
// cost no goroutine while they wait. Measured on loopback (BenchmarkIdleChannels,
// both ends in one process, default policy): per channel end about 37 KiB of
// heap, 14 KiB of stack and 4 goroutines, quic-go's connection included.
//
// The wire format is specified in docs/protocol.md, section 3.
package control
