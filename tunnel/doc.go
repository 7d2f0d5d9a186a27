// Package tunnel carries UDP datagrams over a rock (a *tcprocks.Conn) or
// any other reliable byte stream: legacy UDP services reach networks that
// block UDP, and their flows survive the moves and failures the rock
// survives. It is the library behind `rockudp tunnel client|server`.
//
// A Client reads datagrams from any number of local sources on one UDP
// socket. Each source address is a flow; the Server gives every flow a UDP
// socket of its own towards one service address, so replies return to the
// source they belong to. Flows end after an idle timeout and their number is
// bounded on both sides. Datagrams travel as frames (docs/protocol.md,
// section 4): one frame per datagram, never split or merged, of any size UDP
// allows.
//
// # Shape
//
// Like yamux, a tunnel end wraps an io.ReadWriteCloser it owns:
//
//	rock, _ := tcprocks.Dial(ctx, "tcp", "server:7000", nil)
//	udp, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353})
//	c, _ := tunnel.NewClient(rock, udp, &tunnel.Config{MaxAge: 2 * time.Second})
//	<-c.Done() // c.Err() says why
//
// and on the other side, for every accepted rock:
//
//	l, _ := tcprocks.Listen("tcp", ":7000", nil)
//	a, _ := tunnel.Serve(l, "127.0.0.1:53", nil) // a Server per connection
//
// # Suspension and max-age
//
// The UDP readers never block on the rock. Frames wait in a queue bounded
// in bytes (Config.MaxQueue, default 4 MiB); one writer goroutine drains it
// into the rock, one Write per batch of frames. While the rock is suspended
// its Write blocks and the queue fills. Config.MaxAge is the sending end's
// policy: 0 keeps every datagram (reliable streams such as logs: with the
// rock underneath, each arrives exactly once and in order per flow, as long
// as the queue bound is not reached); a positive max-age drops datagrams that
// would arrive older than that (fresh-only streams). It is applied when a
// frame would be written (DropTooOld) and, for bytes the rock held while
// suspended, by the receiver, which estimates each frame's extra delay from
// the sender's timestamp (DropStale). The guarantee is stated precisely in
// docs/protocol.md section 4.3. A full queue drops new datagrams
// (DropQueueFull) after dropping expired ones from its head.
//
// # Performance
//
// Datagrams are read and sent with recvmmsg/sendmmsg (golang.org/x/net/ipv4
// ReadBatch/WriteBatch). Framing, queueing, parsing and sending allocate
// nothing per datagram (x/net's ReadBatch allocates each source address).
// Server flows wait for a datagram before they borrow read buffers from a
// shared pool, so idle flows hold none.
//
// # Errors
//
// A malformed frame or an oversized length ends that tunnel: its rock is
// closed, a warning is logged and Err wraps ErrMalformed; other tunnels run
// on. A datagram larger than the far end can send is dropped and counted
// (DropTooBig), never truncated. Stats returns every counter, including
// drops by reason, for export (e.g. to Prometheus by the CLI).
package tunnel
