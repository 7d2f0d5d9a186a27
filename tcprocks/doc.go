// Package tcprocks implements reliable sockets ("rocks", Zandy and Miller, "Reliable Network
// Connections", sections 4 and 6): TCP connections that survive failures of the network under
// them — address changes of either end, link failures, disconnections of hours or days —
// without losing or duplicating a byte.
//
// The API is shaped like crypto/tls: Dial, Listen, NewListener, and a *Conn that implements
// net.Conn (deadlines included) and CloseWrite. A Conn against a peer that does not speak
// rocks is a plain TCP connection (Enhanced() == false).
//
// # How it works
//
// A rock is the EDP enhancement rocks/1 (package edp). At initialisation both ends run X25519
// and HKDF-SHA256 to derive a resumption key and a control key, and exchange their kernel
// socket-buffer maxima; the listener picks a random 128-bit connection ID. The data
// connection then carries the application's bytes unframed. A QUIC control channel (package
// internal/control, on the UDP port with the listener's TCP port number) is set up in the
// background; it carries heartbeats with each side's count of bytes consumed, and the close
// messages.
//
// Every written byte stays in an in-flight buffer until the peer has provably consumed it:
// either the peer said so (heartbeat or early ack every 256 KiB), or more than C bytes have
// been written into TCP since, where C = this side's send-buffer maximum + the peer's
// receive-buffer maximum + 1 MiB of slack (Linux autotuning maxima, net.ipv4.tcp_wmem[2] and
// tcp_rmem[2]; see Config.InFlightLimit for TCP-terminating middleboxes). A writer therefore
// never waits for acknowledgements in steady state, and the buffer never exceeds C.
//
// A rock suspends when heartbeats stop (Policy: 1 s interval, 3 missed), when the data
// connection fails (error, reset, EOF without a close message, or the kernel's TCP state
// leaving ESTABLISHED, checked at every heartbeat), or on Conn.Suspend. Reads and writes block
// while suspended, honouring deadlines. Only the dialing side reconnects (the listening side
// has no address that survives a client move; it waits for the resume): last known address at
// once, then alternates, the dialed address and the Locator, with capped exponential backoff
// (at most 1 s between rounds during the first minute). Both ends authenticate with a mutual
// HMAC challenge–response over fresh nonces, then replay (go-back-N) exactly the bytes the
// other has not received. A listener that does not know the connection ID (its process
// restarted) refuses definitely; after Policy.RefusalGrace (1 min) of nothing but refusals
// the rock closes with ErrPeerLost. After Policy.ReconnectTimeout (72 h) a suspended rock
// closes with ErrReconnectTimeout.
//
// Rocks also follow the machine's network (one netlink monitor per process, see
// Config.IgnoreNetworkChanges): a rock whose local address disappears suspends at once, and
// suspended rocks retry at once, with their backoff reset, when an address, a link or a
// default route appears.
//
// # Security and limits
//
// An optional pre-shared key (Config.PSK) is mixed into the key schedule and confirmed at
// initialisation: a peer with another key, or without one, fails with ErrPSKMismatch on both
// ends and never gets a rock; a listener with a key refuses ordinary TCP clients. A listener
// bounds its rocks, suspended rocks, in-flight memory, pending handshakes and resume attempts
// per connection ID (Config.MaxRocks and following); at a limit it refuses new work with
// ErrLimit and never disturbs established rocks.
//
// # Hand-off
//
// Conn.Export suspends a rock and serialises its state (keys included: it is secret, write it
// with mode 0600); Import (dialing side) and Listener.Import (accepting side) revive it in
// another process, which resumes and replays as after any suspension.
//
// # Close
//
// Close returns at once; pending and later calls fail with net.ErrClosed. The rock then
// lingers, owned by a goroutine of its own, until the peer has acknowledged the close and
// consumed every byte (FIN and FIN-ACK on the control channel, or the same information in a
// resumption exchange) — reconnecting first if it is suspended — or until the reconnect
// timeout. An application's abortive close (reset) is a graceful close too: rocks use resets
// to recognise failures. The side that sent the last acknowledgement keeps the rock for two
// heartbeat timeouts in case the acknowledgement was lost. When UDP is blocked, the close
// completes through a reconnection (the linger drops the data connection after a heartbeat
// timeout without a control channel, and the resumption exchange carries both sides' close
// state and counts).
//
// Wire formats are in docs/protocol.md, section 2.
package tcprocks
