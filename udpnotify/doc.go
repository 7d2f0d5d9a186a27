// Package udpnotify gives a UDP flow (media, voice, game state, telemetry) a rock as its
// signalling channel, as SIP gives RTP one (paper section 8): the datagrams stay on UDP, with
// UDP's timing, and the rock — which knows when the peer has failed and when it has been
// found again — tells the application, at once, where the peer's UDP flow now is.
//
// # Sessions
//
// A Session joins one UDP socket to one rock. The receiving side dials (Dial, or Client over
// a rock it dialed) and announces its UDP addresses; the sending side accepts the rock from a
// tcprocks.Listener and runs Server on it. Both sides get typed events (package callbacks),
// in order, from one queue per handler:
//
//	Suspended            the peer is unreachable; Cause says why (the rock's suspension)
//	Resumed              the peer is back (the rock resumed)
//	PeerMoved            sending side: the receiver's UDP address changed (From → To), validated
//	PathValidated        receiving side: the sender now sends to To (as the sender sees it)
//	LocalAddressChanged  this machine's addresses changed (netlink, package internal/netmon)
//	TimedOut, Closed     the session has ended
//
// # Path validation
//
// The sending side follows wireguard-go's roaming rule: the peer has moved only once its new
// address is proven. A candidate address — announced by the receiver over the rock, or the
// source of a keepalive that carries the session's ID — is used only after both halves of a
// keyed check succeed (docs/udpnotify.md): a token sent over the rock comes back in a UDP
// datagram from exactly that address, and a token sent in a UDP datagram to that address comes
// back over the rock. The tokens are HMACs over the session ID, the address and a nonce, with
// a key that never leaves the sender. So neither spoofed datagrams from a third host nor a
// session that announces a victim's address can redirect the flow: their validations fail,
// are counted (Stats.ValidationsFailed) and logged, and the victim sees at most a few 45-byte
// probes. Behind a NAT, the receiver's periodic keepalives (Config.KeepaliveInterval) keep the
// mapping open; when the mapping changes, the next keepalive comes from the new public address
// and the sender validates and follows it.
//
// When the receiver's local addresses change, it re-announces them at once and sends a burst
// of keepalives; if the rock's own address disappeared it suspends the rock so that it
// reconnects now rather than after missed heartbeats.
//
// # Datagrams
//
// Session.PacketConn is a net.PacketConn that always sends to the peer's current validated
// address (WriteTo ignores its address argument), from the local address the peer last wrote
// to, and that reads only the peer's datagrams, with their local destination address and
// interface (IP_PKTINFO, IPV6_PKTINFO; PacketConn.ReadDatagram). Control datagrams start with
// the byte 0xFF, which no RTP packet does, and never reach the application.
//
// An application that wants only the events subscribes (Config.Handler, Session.Subscribe)
// and leaves PacketConn alone: the session still reads its socket for the control datagrams
// and drops (and counts) application datagrams nobody reads. Its own sockets learn the peer's
// address from PeerMoved.To — which, behind a NAT, is the mapping of the session's socket,
// not of theirs.
//
// # Fallback
//
// With Config.Fallback, the sending side carries its datagrams over the rock, as tunnel data
// frames (docs/protocol.md section 4), while UDP between the peers does not work, with the
// tunnel's max-age semantics (Config.FallbackMaxAge); it returns to UDP as soon as a datagram
// from the peer's validated address shows that UDP works again. Off by default.
package udpnotify
