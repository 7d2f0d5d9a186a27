package main

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/rtp"
	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/tcprocks"
	"github.com/rockudp/rockudp/udpnotify"
)

// Media: 50 packets/s of 1,200 B of payload, as a video or voice stream would send.
const (
	packetRate  = 50
	payloadSize = 1200
	payloadType = 96 // dynamic
	clockRate   = 90000
)

func runSender(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sender", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", "TCP address for the rocks (host:port); the session's UDP sockets are on the same host")
	pskFile := fs.String("psk-file", "", "pre-shared key file (rockudp keygen); receivers must use the same one")
	noAuth := fs.Bool("no-auth", false, "run without a pre-shared key: anyone who reaches --listen gets a stream")
	fallback := fs.Duration("fallback", 0, "carry the media over the rock after this long without a working UDP path (0: never)")
	maxAge := fs.Duration("max-age", 0, "with --fallback: drop media that would arrive older than this (0: keep all)")
	verbose := fs.Bool("v", false, "debug logs")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if *listen == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: streaming sender --listen ADDR [--psk-file F | --no-auth]")
		return errUsage
	}
	if (*pskFile == "") == !*noAuth {
		return errors.New("give exactly one of --psk-file (rockudp keygen makes one) and --no-auth")
	}
	log := newLogger(stderr, *verbose)
	cfg, err := rockConfig(*pskFile, log)
	if err != nil {
		return err
	}
	l, err := tcprocks.Listen("tcp", *listen, cfg)
	if err != nil {
		return err
	}
	out := &lineWriter{w: stdout}
	out.printf("listening on %v", l.Addr())
	host, _, _ := net.SplitHostPort(l.Addr().String())

	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		rock, err := l.AcceptConn()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if cfg.PSK != nil && !rock.Enhanced() {
			rock.Close() // no proof of the key: plain TCP never gets a stream
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := serveReceiver(ctx, rock, host, &udpnotify.Config{Fallback: *fallback, FallbackMaxAge: *maxAge, Logger: log}, out); err != nil {
				log.Warn("receiver ended", "remote", rock.RemoteAddr(), "err", err)
			}
		}()
	}
}

// serveReceiver reads what the receiver wants and streams to it until the rock ends.
func serveReceiver(ctx context.Context, rock *tcprocks.Conn, host string, cfg *udpnotify.Config, out *lineWriter) error {
	rock.SetReadDeadline(time.Now().Add(10 * time.Second))
	var mode [1]byte
	if _, err := io.ReadFull(rock, mode[:]); err != nil {
		rock.Close()
		return err
	}
	rock.SetReadDeadline(time.Time{})
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(host)})
	if host == "" || net.ParseIP(host).IsUnspecified() {
		udp, err = net.ListenUDP("udp", &net.UDPAddr{})
	}
	if err != nil {
		rock.Close()
		return err
	}
	switch mode[0] {
	case modeStatic:
		return streamStatic(ctx, rock, udp, out)
	case modeSession:
		return streamSession(ctx, rock, udp, cfg, out)
	}
	rock.Close()
	udp.Close()
	return fmt.Errorf("unknown mode %q", mode[0])
}

// streamStatic is the control: the receiver's UDP address is fixed at the start, as with
// plain RTP set up once, and the stream goes there until the rock closes.
func streamStatic(ctx context.Context, rock *tcprocks.Conn, udp *net.UDPConn, out *lineWriter) error {
	defer udp.Close()
	defer rock.Close()
	var port [2]byte
	if _, err := io.ReadFull(rock, port[:]); err != nil {
		return err
	}
	ra, err := netip.ParseAddrPort(rock.RemoteAddr().String())
	if err != nil {
		return err
	}
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(ra.Addr().Unmap(), binary.BigEndian.Uint16(port[:])))
	out.printf("static stream to %v (no udpnotify: it will not follow a move)", to)
	ended := make(chan struct{})
	go func() { io.Copy(io.Discard, rock); close(ended) }()
	return stream(ctx, ended, func(b []byte) { udp.WriteTo(b, to) })
}

// streamSession streams through a udpnotify session: always to the receiver's current,
// validated address.
func streamSession(ctx context.Context, rock *tcprocks.Conn, udp *net.UDPConn, base *udpnotify.Config, out *lineWriter) error {
	var id string
	events := callbacks.HandlerFunc(func(e callbacks.Event) {
		switch e.Kind {
		case callbacks.PeerMoved:
			out.printf("session %s peer moved %v -> %v", id, e.From, e.To)
		case callbacks.Suspended:
			out.printf("session %s peer unreachable: %v", id, e.Cause)
		case callbacks.Resumed:
			out.printf("session %s peer back after %v", id, e.Downtime.Round(time.Millisecond))
		case callbacks.LocalAddressChanged:
			out.printf("session %s local address changed %v -> %v", id, e.From, e.To)
		case callbacks.Closed:
			out.printf("session %s closed (%v)", id, e.Cause)
		}
	})
	cfg := *base
	cfg.Handler = events
	s, err := udpnotify.Server(ctx, rock, udp, &cfg)
	if err != nil {
		return err
	}
	sid := s.ID()
	id = hex.EncodeToString(sid[:])
	out.printf("session %s from %v udp %v", id, rock.RemoteAddr(), s.LocalAddr())
	defer func() {
		st := s.Stats()
		s.Close()
		out.printf("session %s stats validated=%d failed=%d echo_mismatches=%d moves=%d bad_datagrams=%d via_rock=%d",
			id, st.Validated, st.ValidationsFailed, st.EchoMismatches, st.Moves, st.BadDatagrams, st.FallbackSent)
	}()
	pc := s.PacketConn()
	return stream(ctx, s.Done(), func(b []byte) { pc.Write(b) })
}

// stream sends RTP packets at packetRate through send until ended is closed or ctx ends.
// The payload starts with the send time (Unix nanoseconds).
func stream(ctx context.Context, ended <-chan struct{}, send func([]byte)) error {
	t := time.NewTicker(time.Second / packetRate)
	defer t.Stop()
	pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: payloadType, SSRC: 0x5eed}, Payload: make([]byte, payloadSize)}
	start := time.Now()
	buf := make([]byte, 0, 1500)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ended:
			return nil
		case now := <-t.C:
			binary.BigEndian.PutUint64(pkt.Payload, uint64(now.UnixNano()))
			pkt.Timestamp = uint32(now.Sub(start) * clockRate / time.Second)
			b, err := pkt.Header.MarshalTo(buf[:cap(buf)])
			if err != nil {
				return err
			}
			// A send error (no route while the network changes, no validated path yet) is
			// not the end of the stream: the next packets may go through.
			send(append(buf[:b], pkt.Payload...))
			pkt.SequenceNumber++
		}
	}
}

// lineWriter writes whole lines, one at a time, with the time since start.
type lineWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineWriter) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format+"\n", args...)
}
