// Package control is a rock's control channel: heartbeats and control messages
// bound to the rock's control key, over QUIC (quic-go) or, where UDP is
// blocked, over TCP.
//
// The server side listens on the UDP twin of the rock listener's TCP port
// (Listen); the client side is one Client per process, whose Dials share one
// quic.Transport on an ephemeral dual-stack UDP socket. All the channels
// between one Client and one Server share one QUIC connection, a session: each
// channel is bound separately with its own rock's key, control messages of
// every channel share the session's stream, and heartbeats of many channels
// travel in one datagram. Ten thousand idle rocks between two processes cost one
// QUIC connection.
//
// TLS runs with a throwaway self-signed certificate that nobody verifies.
// Authentication is the channel binding: to bind channel number n of a session,
// the client sends the rock's connection ID and HMAC-SHA256(key, label_client ||
// exporter || n), where exporter is the TLS exporter value of this very session;
// the server checks it with the key of that ID and answers with
// HMAC-SHA256(key, label_server || exporter || n). A man in the middle that
// relays two TLS sessions sees two different exporter values and cannot pass.
// Only channels on which both proofs succeeded are returned by Accept and Dial.
//
// The TCP fallback (DialTCP, Server.TCPEnhancement, ServeTCP) is one TCP
// connection per channel, opened through EDP as the enhancement rockctl/1: both
// ends prove the key over fresh nonces, and every frame carries an HMAC tag.
//
// Once started, a Channel sends a heartbeat every Interval carrying the count
// of bytes the local application has consumed, reports the peer's count to
// OnHeartbeat, and calls OnDead when Misses intervals pass without a heartbeat.
// Send carries reliable, ordered control messages.
//
// Per channel the package runs two goroutines: the heartbeat loop (which also
// runs the callbacks) and the control message reader. Timers are runtime
// timers (time.AfterFunc), which cost no goroutine while they wait. A QUIC
// session runs three more (stream reader, datagram reader, stream writer)
// besides quic-go's own; a TCP channel none. TestTenThousandRocks in tcprocks
// measures the cost per idle rock.
//
// The wire format is specified in docs/protocol.md, section 3.
package control
