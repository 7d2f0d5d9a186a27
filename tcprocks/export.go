package tcprocks

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/inflight"
)

// Hand-off (paper section 7, checkpoint and migration): Export writes a rock's state, Import
// revives it in another process, which then reconnects (client) or waits for the client
// (server) and replays as after any suspension.
//
// Format (version 1, big-endian), docs/protocol.md section 2.7:
//
//	magic "\x89ROCKEXP" (8) · version (1) · role (1) · ID (16) · resume key (32) ·
//	control key (32) · limit (8) · peer limit (8) · sent (8) · acked (8) · received (8) ·
//	fin (1) · finAt (8) · peer fin (1) · peer finAt (8) · flags (1) · suspended at (8, Unix ns) ·
//	established (8, Unix ns) · suspensions (4) · policy: heartbeat (8, ns) · misses (4) ·
//	reconnect timeout (8, ns) · backoff initial (8) · backoff max (8) · refusal grace (8) ·
//	strings, each length (2) and bytes: network, dialed address, peer address, peer name,
//	EDP announcement · alternates: count (1) and as many strings · data length (8) and the
//	unacknowledged bytes [acked, sent).
const (
	stateMagic   = "\x89ROCKEXP"
	stateVersion = 1
	// Limits checked before anything is allocated.
	maxStateString     = 1024
	maxStateAlternates = 64
	// maxStateData bounds the unacknowledged bytes (an in-flight buffer's capacity fits).
	maxStateData  = 1 << 32
	stateFixedLen = len(stateMagic) + 1 + 1 + idLen + 32 + 32 + 5*8 + 1 + 8 + 1 + 8 + 1 + 8 + 8 + 4 + 8 + 4 + 4*8
)

// Flags of the exported state.
const (
	stateFinAcked     = 1 << 0
	statePeerFinAcked = 1 << 1
)

// rockState is a rock's exported state.
type rockState struct {
	Role               callbacks.Role
	ID                 [idLen]byte
	Resume, Control    [32]byte
	Limit, InLimit     uint64
	Sent, Acked, Recv  uint64
	Fin                finState
	FinAt              uint64
	PeerFin            finState
	PeerFinAt          uint64
	Flags              uint8
	SuspendedAt, Estab int64
	Suspensions        uint32
	Policy             callbacks.Policy
	Network, Dialed    string
	Remote, PeerName   string
	Announcement       []byte
	Alternates         []string
	Data               []byte
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendState(b []byte, s *rockState) []byte {
	b = append(b, stateMagic...)
	b = append(b, stateVersion, byte(s.Role))
	b = append(b, s.ID[:]...)
	b = append(b, s.Resume[:]...)
	b = append(b, s.Control[:]...)
	for _, v := range []uint64{s.Limit, s.InLimit, s.Sent, s.Acked, s.Recv} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	b = append(b, byte(s.Fin))
	b = binary.BigEndian.AppendUint64(b, s.FinAt)
	b = append(b, byte(s.PeerFin))
	b = binary.BigEndian.AppendUint64(b, s.PeerFinAt)
	b = append(b, s.Flags)
	b = binary.BigEndian.AppendUint64(b, uint64(s.SuspendedAt))
	b = binary.BigEndian.AppendUint64(b, uint64(s.Estab))
	b = binary.BigEndian.AppendUint32(b, s.Suspensions)
	p := s.Policy
	b = binary.BigEndian.AppendUint64(b, uint64(p.HeartbeatInterval))
	b = binary.BigEndian.AppendUint32(b, uint32(p.MissedHeartbeats))
	for _, d := range []time.Duration{p.ReconnectTimeout, p.BackoffInitial, p.BackoffMax, p.RefusalGrace} {
		b = binary.BigEndian.AppendUint64(b, uint64(d))
	}
	for _, str := range []string{s.Network, s.Dialed, s.Remote, s.PeerName, string(s.Announcement)} {
		b = appendString(b, str)
	}
	b = append(b, byte(len(s.Alternates)))
	for _, a := range s.Alternates {
		b = appendString(b, a)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(len(s.Data)))
	return append(b, s.Data...)
}

var errState = errors.New("tcprocks: malformed exported state")

// stateReader reads an exported state, remembering the first error.
type stateReader struct {
	b   []byte
	err error
}

func (r *stateReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b) < n {
		r.err = fmt.Errorf("%w: truncated", errState)
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *stateReader) u8() uint8 {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *stateReader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (r *stateReader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (r *stateReader) dur() time.Duration { return time.Duration(int64(r.u64())) }

func (r *stateReader) str(limit int) string {
	n := 0
	if p := r.take(2); p != nil {
		n = int(binary.BigEndian.Uint16(p))
	}
	if r.err == nil && n > limit {
		r.err = fmt.Errorf("%w: string of %d bytes (at most %d)", errState, n, limit)
	}
	return string(r.take(n))
}

func (r *stateReader) fin() finState {
	f, err := parseFin(r.u8())
	if err != nil && r.err == nil {
		r.err = fmt.Errorf("%w: %w", errState, err)
	}
	return f
}

// parseState parses an exported state. It checks every length against its limit before it
// allocates, and the counters' consistency.
func parseState(b []byte) (*rockState, error) {
	if len(b) < stateFixedLen || string(b[:len(stateMagic)]) != stateMagic {
		return nil, fmt.Errorf("%w: no rock state (bad magic or too short)", errState)
	}
	r := &stateReader{b: b[len(stateMagic):]}
	if v := r.u8(); v != stateVersion {
		return nil, fmt.Errorf("%w: version %d, this program reads %d", errState, v, stateVersion)
	}
	s := &rockState{Role: callbacks.Role(r.u8())}
	copy(s.ID[:], r.take(idLen))
	copy(s.Resume[:], r.take(32))
	copy(s.Control[:], r.take(32))
	s.Limit, s.InLimit, s.Sent, s.Acked, s.Recv = r.u64(), r.u64(), r.u64(), r.u64(), r.u64()
	s.Fin, s.FinAt = r.fin(), r.u64()
	s.PeerFin, s.PeerFinAt = r.fin(), r.u64()
	s.Flags = r.u8()
	s.SuspendedAt, s.Estab = int64(r.u64()), int64(r.u64())
	s.Suspensions = r.u32()
	s.Policy.HeartbeatInterval = r.dur()
	s.Policy.MissedHeartbeats = int(r.u32())
	s.Policy.ReconnectTimeout, s.Policy.BackoffInitial, s.Policy.BackoffMax, s.Policy.RefusalGrace = r.dur(), r.dur(), r.dur(), r.dur()
	s.Network = r.str(8)
	s.Dialed = r.str(maxStateString)
	s.Remote = r.str(maxStateString)
	s.PeerName = r.str(MaxNameLen)
	s.Announcement = []byte(r.str(edp.AnnouncementLen))
	n := int(r.u8())
	if r.err == nil && n > maxStateAlternates {
		return nil, fmt.Errorf("%w: %d alternates (at most %d)", errState, n, maxStateAlternates)
	}
	for range n {
		s.Alternates = append(s.Alternates, r.str(maxStateString))
	}
	dl := r.u64()
	if r.err != nil {
		return nil, r.err
	}
	switch {
	case s.Role != callbacks.Client && s.Role != callbacks.Server:
		return nil, fmt.Errorf("%w: role %d", errState, s.Role)
	case dl > maxStateData || dl != uint64(len(r.b)):
		return nil, fmt.Errorf("%w: %d data bytes announced, %d present", errState, dl, len(r.b))
	case s.Acked > s.Sent || s.Sent-s.Acked != dl:
		return nil, fmt.Errorf("%w: counters (acked %d, sent %d) do not match %d data bytes", errState, s.Acked, s.Sent, dl)
	case s.Fin != finNone && s.FinAt > s.Sent, s.PeerFin != finNone && s.PeerFinAt < s.Recv:
		return nil, fmt.Errorf("%w: close counts", errState)
	case s.Limit == 0 || s.InLimit == 0 || s.Limit > math.MaxInt64 || s.InLimit > math.MaxInt64:
		return nil, fmt.Errorf("%w: in-flight limits", errState)
	case len(s.Announcement) != 0 && len(s.Announcement) != edp.AnnouncementLen:
		return nil, fmt.Errorf("%w: announcement of %d bytes", errState, len(s.Announcement))
	case checkName(s.PeerName) != nil:
		return nil, fmt.Errorf("%w: peer name", errState)
	case s.Policy.MissedHeartbeats < 0 || s.Policy.HeartbeatInterval < 0:
		return nil, fmt.Errorf("%w: policy", errState)
	}
	s.Data = r.b
	return s, nil
}

// Export suspends c (without telling the peer it is gone), serialises its state (ID, keys,
// counters, unacknowledged bytes, role, peer addresses, policy) and releases c: its methods
// then fail with ErrExported. The peer sees an ordinary failure and waits for a resumption,
// which the process that imports the state (Import, Listener.Import) provides.
//
// The state is secret (it holds the rock's keys): write it only to files with mode 0600, and
// import it once — two live copies of one rock would fight over the peer. Event handlers
// receive a Closed event whose cause matches ErrExported. A plain TCP Conn, a rock that was
// closed and one that has finished cannot be exported.
func (c *Conn) Export() ([]byte, error) {
	if c.plain != nil {
		return nil, errors.New("tcprocks: export: a plain TCP connection has no state to hand off")
	}
	// No resumption under way: it would change the counters.
	c.resumeMu.Lock()
	defer c.resumeMu.Unlock()
	c.mu.Lock()
	switch {
	case c.appClosed:
		c.unlock()
		return nil, c.opError("export", net.ErrClosed)
	case c.finished:
		err := c.finErr
		c.unlock()
		if err == nil {
			err = net.ErrClosed
		}
		return nil, c.opError("export", err)
	}
	if c.state == Connected {
		// Suspend without a Suspended event or a reconnection, and let the readers leave the
		// data connection: the count we export must be final.
		c.interruptReaders()
		c.detach()
		c.broadcast()
	}
	for c.readers > 0 && !c.finished {
		c.wait(time.Time{})
	}
	if c.finished {
		err := c.finErr
		c.unlock()
		return nil, c.opError("export", err)
	}
	s := &rockState{
		Role: c.role, ID: c.id, Limit: c.limit, InLimit: c.inLim,
		Sent: c.sent, Acked: c.acked, Recv: c.received,
		Fin: c.localFin, FinAt: c.finAt, PeerFin: c.peerFin, PeerFinAt: c.peerFinAt,
		Estab: c.established.UnixNano(), Suspensions: uint32(min(c.suspensions, math.MaxUint32)),
		Policy: c.policy, Network: c.netw, Dialed: c.dialed, PeerName: c.peerName,
		Announcement: c.ann, Alternates: c.alternates,
	}
	copy(s.Resume[:], c.keys.resume)
	copy(s.Control[:], c.keys.control)
	if c.finAcked {
		s.Flags |= stateFinAcked
	}
	if c.peerFinAcked {
		s.Flags |= statePeerFinAcked
	}
	if c.raddr != nil {
		s.Remote = c.raddr.String()
	}
	s.SuspendedAt = c.suspendedAt.UnixNano()
	if len(s.Alternates) > maxStateAlternates {
		s.Alternates = s.Alternates[:maxStateAlternates]
	}
	size := stateFixedLen + 1024 + int(c.sent-c.acked)
	for _, str := range []string{s.Network, s.Dialed, s.Remote, s.PeerName} {
		size += len(str)
	}
	out := make([]byte, 0, size)
	for _, p := range c.buf.Slices(nil, c.acked, c.sent) {
		s.Data = append(s.Data, p...)
	}
	out = appendState(out, s)
	c.finish(&Error{Kind: ErrExported, Detail: "the rock's state was handed off"})
	c.unlock()
	return out, nil
}

// Import revives an exported dialing-side rock in this process: it reconnects at once and
// replays. cfg supplies what is not part of the state (Handler, Locator, Authenticator, PSK,
// dialer, control client, ...); the state's policy and alternates replace cfg's.
func Import(state []byte, cfg *Config) (*Conn, error) {
	s, err := parseState(state)
	if err != nil {
		return nil, err
	}
	if s.Role != callbacks.Client {
		return nil, errors.New("tcprocks: import: the state is an accepted rock's; use Listener.Import")
	}
	c := revive(s, cfg.withDefaults(), nil)
	return c, nil
}

// Import revives an exported accepted rock on l: it waits for the client's resumption like any
// suspended rock (the client must be able to reach l: same address, or one it learns through
// its alternates or locator, and the same EDP announcement, Config.EDP.Announcement, so that
// the client's cached announcement is still valid).
func (l *Listener) Import(state []byte) (*Conn, error) {
	s, err := parseState(state)
	if err != nil {
		return nil, err
	}
	if s.Role != callbacks.Server {
		return nil, errors.New("tcprocks: import: the state is a dialing rock's; use tcprocks.Import")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isClosed {
		return nil, &net.OpError{Op: "import", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
	if l.rocks[s.ID] != nil {
		return nil, fmt.Errorf("tcprocks: import: rock %x is already here", s.ID[:4])
	}
	c := revive(s, l.cfg, l)
	l.rocks[s.ID] = c
	return c, nil
}

// revive makes a suspended rock from an exported state.
func revive(s *rockState, cfg *Config, l *Listener) *Conn {
	c := newConn(cfg, rockParams{role: s.Role, id: s.ID, keys: keys{resume: s.Resume[:], control: s.Control[:]}, peerName: s.PeerName})
	c.lst = l
	c.limit, c.inLim = s.Limit, s.InLimit
	c.policy = s.Policy.WithDefaults()
	c.alternates = append([]string(nil), s.Alternates...)
	c.dialed, c.netw, c.ann = s.Dialed, s.Network, s.Announcement
	if len(c.ann) == 0 {
		c.ann = nil
	}
	c.established = time.Unix(0, s.Estab)
	c.suspensions = int(s.Suspensions)
	if ra, err := net.ResolveTCPAddr("tcp", s.Remote); err == nil && s.Remote != "" {
		c.raddr = ra
	}
	c.addrs.Store(&[2]net.Addr{nil, c.raddr})
	c.mu.Lock()
	c.buf = inflight.At(s.Acked)
	c.buf.Append(s.Data)
	c.account()
	c.sent, c.acked, c.written, c.received, c.lastReport = s.Sent, s.Acked, s.Acked, s.Recv, s.Recv
	c.localFin, c.finAt, c.peerFin, c.peerFinAt = s.Fin, s.FinAt, s.PeerFin, s.PeerFinAt
	c.finAcked, c.peerFinAcked = s.Flags&stateFinAcked != 0, s.Flags&statePeerFinAcked != 0
	c.gen++
	c.setState(Suspended)
	c.suspendedAt = time.Unix(0, s.SuspendedAt)
	c.armTimeout()
	if c.role == callbacks.Client {
		c.reconnectOn = true
		c.wg.Go(c.reconnectLoop)
	}
	c.mu.Unlock()
	c.watchData()
	c.watchNetwork()
	return c
}
