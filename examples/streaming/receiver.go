package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/pion/rtp"
	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/tcprocks"
	"github.com/rockudp/rockudp/udpnotify"
)

// gapReport is the smallest pause between two packets that the receiver reports as a gap
// (the stream sends every 20 ms). A packet that arrives at another local address than the
// one before is always reported: the gap is the move's cost.
const gapReport = 200 * time.Millisecond

// Summary is the receiver's last line.
type Summary struct {
	Received uint64 `json:"received"`
	Lost     uint64 `json:"lost"`
	Late     uint64 `json:"late"`
	MaxGapMS int64  `json:"max_gap_ms"`
	Moves    uint64 `json:"moves"`
}

func runReceiver(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("receiver", flag.ContinueOnError)
	fs.SetOutput(stderr)
	senderAddr := fs.String("sender", "", "the sender's --listen address (host:port)")
	duration := fs.Duration("duration", 0, "how long to receive before printing the summary")
	noNotify := fs.Bool("no-udpnotify", false, "the control: give the sender a fixed UDP address, which a move breaks")
	pskFile := fs.String("psk-file", "", "pre-shared key file, the sender's")
	keepalive := fs.Duration("keepalive", udpnotify.DefaultKeepaliveInterval, "pause between keepalives that hold NAT mappings open")
	noNetmon := fs.Bool("no-netmon", false, "do not watch local addresses (moves are then seen when the rock resumes)")
	verbose := fs.Bool("v", false, "debug logs")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *senderAddr == "" || *duration <= 0 || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: streaming receiver --sender HOST:PORT --duration D [--no-udpnotify] [--psk-file F]")
		return errUsage
	}
	log := newLogger(stderr, *verbose)
	cfg, err := rockConfig(*pskFile, log)
	if err != nil {
		return err
	}
	cfg.RequireEnhanced = true
	out := &lineWriter{w: stdout}
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	rock, err := tcprocks.Dial(dctx, "tcp", *senderAddr, cfg)
	cancel()
	if err != nil {
		return err
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		rock.Close()
		return err
	}
	st := &streamStats{out: out, start: start}
	var read func(b []byte) (int, udpnotify.Info, error)
	var setDeadline func(time.Time) error
	var moves func() uint64
	closeSession := func() {}
	if *noNotify {
		defer udp.Close()
		defer rock.Close()
		var hdr [3]byte
		hdr[0] = modeStatic
		binary.BigEndian.PutUint16(hdr[1:], uint16(udp.LocalAddr().(*net.UDPAddr).Port))
		if _, err := rock.Write(hdr[:]); err != nil {
			return err
		}
		out.printf("static subscription from udp %v", udp.LocalAddr())
		read = func(b []byte) (int, udpnotify.Info, error) {
			n, from, err := udp.ReadFromUDPAddrPort(b)
			return n, udpnotify.Info{From: netip.AddrPortFrom(from.Addr().Unmap(), from.Port())}, err
		}
		setDeadline = udp.SetReadDeadline
		moves = func() uint64 { return 0 }
	} else {
		if _, err := rock.Write([]byte{modeSession}); err != nil {
			rock.Close()
			udp.Close()
			return err
		}
		events := callbacks.HandlerFunc(func(e callbacks.Event) {
			switch e.Kind {
			case callbacks.PathValidated:
				out.printf("%s path validated %v -> %v", st.since(), e.From, e.To)
				if e.From != nil {
					st.reportMove(e.Time, e.To)
				}
			case callbacks.LocalAddressChanged:
				out.printf("%s local address changed %v -> %v", st.since(), e.From, e.To)
			case callbacks.Suspended:
				out.printf("%s sender unreachable: %v", st.since(), e.Cause)
			case callbacks.Resumed:
				out.printf("%s sender back after %v", st.since(), e.Downtime.Round(time.Millisecond))
			case callbacks.Closed:
				out.printf("%s session closed (%v)", st.since(), e.Cause)
			}
		})
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		s, err := udpnotify.Client(sctx, rock, udp, &udpnotify.Config{Handler: events, KeepaliveInterval: *keepalive, NoMonitor: *noNetmon, Logger: log})
		cancel()
		if err != nil {
			return err
		}
		defer s.Close()
		closeSession = func() { s.Close() } // before the summary, which must be the last line
		out.printf("session from udp %v to sender %v", s.LocalAddr(), s.Peer())
		pc := s.PacketConn()
		read, setDeadline = pc.ReadDatagram, pc.SetReadDeadline
		moves = func() uint64 { return s.Stats().Moves }
	}

	end := start.Add(*duration)
	stop := context.AfterFunc(ctx, func() { setDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 2048)
	nextReport := start.Add(time.Second)
	for ctx.Err() == nil && time.Now().Before(end) {
		setDeadline(minTime(end, nextReport))
		n, info, err := read(buf)
		now := time.Now()
		switch {
		case err == nil:
			st.packet(buf[:n], info, now)
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return err
		}
		if !now.Before(nextReport) {
			st.progress(now) // once a second, also while nothing arrives
			nextReport = nextReport.Add(time.Second)
		}
	}
	now := time.Now()
	if now.After(end) {
		now = end
	}
	sum := st.summary(now, moves())
	closeSession()
	st.moves.Wait() // the move reports come before the summary
	b, _ := json.Marshal(sum)
	out.printf("%s", b)
	return nil
}

// streamStats follows the RTP stream: sequence numbers (extended past 16 bits), arrivals
// and gaps.
type streamStats struct {
	out   *lineWriter
	start time.Time
	moves sync.WaitGroup // pending move reports

	mu          sync.Mutex // packets are counted by the reader, gaps read by event handlers
	gaps        []gapAt    // the latest pauses of 60 ms or more
	received    uint64
	late        uint64
	first, high int64 // extended sequence numbers
	last        time.Time
	lastDst     netip.Addr
	maxGap      time.Duration
}

// gapAt is a pause in the stream that ended at end.
type gapAt struct {
	end time.Time
	gap time.Duration
}

// moveWindow is how long after a validated move the stream's longest pause (ending then, or
// up to a fifth of it before) is taken as the move's media gap.
const moveWindow = time.Second

// reportMove prints, once the stream has had a moment to resume, the longest pause around the
// path change validated at t: the move's media gap, however short.
func (s *streamStats) reportMove(t time.Time, to net.Addr) {
	s.moves.Add(1)
	time.AfterFunc(moveWindow, func() {
		defer s.moves.Done()
		s.mu.Lock()
		var g time.Duration
		for _, x := range s.gaps {
			// The first packet on the new path comes right after the validation (the sender
			// switches at once), so the move's pause ends at about t.
			if x.end.After(t.Add(-moveWindow/5)) && x.end.Before(t.Add(moveWindow)) {
				g = max(g, x.gap)
			}
		}
		s.mu.Unlock()
		s.out.printf("%s move to %v: media gap_ms=%d", s.since(), to, g.Milliseconds())
	})
}

func (s *streamStats) since() string {
	return fmt.Sprintf("t=%.3fs", time.Since(s.start).Seconds())
}

// packet accounts for one datagram. A packet is late when a later one (higher sequence
// number) arrived before it: a playout buffer would have moved past it.
func (s *streamStats) packet(b []byte, info udpnotify.Info, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var h rtp.Header
	if _, err := h.Unmarshal(b); err != nil || h.Version != 2 {
		return
	}
	if s.received == 0 {
		s.first, s.high = int64(h.SequenceNumber), int64(h.SequenceNumber)
		if info.Dst.IsValid() {
			s.out.printf("%s first packet at %v from %v", s.since(), info.Dst, info.From)
		} else {
			s.out.printf("%s first packet from %v", s.since(), info.From)
		}
	} else {
		seq := s.high + int64(int16(h.SequenceNumber-uint16(s.high))) // nearest to the highest
		if seq > s.high {
			s.high = seq
		} else {
			s.late++
		}
		gap := now.Sub(s.last)
		s.maxGap = max(s.maxGap, gap)
		if gap >= 3*time.Second/packetRate {
			if len(s.gaps) == 64 {
				s.gaps = s.gaps[1:]
			}
			s.gaps = append(s.gaps, gapAt{end: now, gap: gap})
		}
		if gap >= gapReport || info.Dst != s.lastDst {
			how := ""
			if info.ViaRock {
				how = " over the rock"
			}
			s.out.printf("%s gap_ms=%d resumed at %v (before: %v) from %v%s", s.since(), gap.Milliseconds(), info.Dst, s.lastDst, info.From, how)
		}
	}
	s.received++
	s.last, s.lastDst = now, info.Dst
}

func (s *streamStats) progress(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gap := time.Duration(0)
	if s.received > 0 {
		gap = now.Sub(s.last)
	}
	s.out.printf("%s received=%d lost=%d late=%d gap_ms=%d", s.since(), s.received, s.lost(), s.late, gap.Milliseconds())
}

func (s *streamStats) lost() uint64 {
	if s.received == 0 {
		return 0
	}
	expected := uint64(s.high - s.first + 1)
	if expected < s.received {
		return 0 // duplicates
	}
	return expected - s.received
}

// summary is the final result; a stream that stopped counts the silence until the end as a
// gap too.
func (s *streamStats) summary(end time.Time, moves uint64) Summary {
	s.mu.Lock()
	defer s.mu.Unlock()
	gap := s.maxGap
	if s.received > 0 {
		gap = max(gap, end.Sub(s.last))
	} else {
		gap = end.Sub(s.start)
	}
	return Summary{Received: s.received, Lost: s.lost(), Late: s.late, MaxGapMS: gap.Milliseconds(), Moves: moves}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
