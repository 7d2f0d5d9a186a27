//go:build linux

package netmon

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// groups are the rtnetlink multicast groups the monitor joins.
	groups = unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR |
		unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV6_ROUTE
	// recvBuf is the size of a read buffer. A dump reply never exceeds
	// 32 KiB (the kernel sizes it from the reader's buffer, capped there).
	recvBuf = 64 << 10
	// sockBuf is the kernel receive buffer asked for the event socket:
	// room for a storm before ENOBUFS forces a resync.
	sockBuf = 1 << 20
	// dumpTimeout bounds each read of a dump (the kernel answers at once;
	// this only guards against the impossible).
	dumpTimeout = 5 * time.Second
	// dumpRetries is how many times an interrupted dump is redone.
	dumpRetries = 5
)

// netlinkMon is the Linux osMon. It keeps two sockets, both opened in the
// namespace of the thread that called New: ev joins the multicast groups
// and feeds Receive; req, used only by the goroutine that calls State,
// dumps the tables. Dumping on req rather than with syscall.NetlinkRIB keeps the
// dumps in the monitor's namespace whatever thread runs them.
type netlinkMon struct {
	log     *slog.Logger
	ev      *os.File
	evConn  syscall.RawConn
	evBuf   []byte
	req     *os.File
	reqConn syscall.RawConn
	reqBuf  []byte
	seq     uint32
}

func newOSMon(c Config) (osMon, error) {
	ev, evConn, err := openNetlink(groups)
	if err != nil {
		return nil, err
	}
	req, reqConn, err := openNetlink(0)
	if err != nil {
		ev.Close()
		return nil, err
	}
	// Best effort: a bigger buffer makes ENOBUFS (and resyncs) rarer.
	evConn.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, sockBuf) })
	return &netlinkMon{
		log: c.Logger,
		ev:  ev, evConn: evConn, evBuf: make([]byte, recvBuf),
		req: req, reqConn: reqConn, reqBuf: make([]byte, recvBuf),
	}, nil
}

// openNetlink opens and binds a non-blocking rtnetlink socket. Given to
// os.NewFile, it is registered with the Go netpoller: reads park the
// goroutine, deadlines work, and Close unblocks a pending read and closes
// the descriptor only once no read or write uses it.
func openNetlink(groups uint32) (*os.File, syscall.RawConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, fmt.Errorf("netmon: netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("netmon: netlink bind: %w", err)
	}
	f := os.NewFile(uintptr(fd), "rtnetlink")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("netmon: netlink: %w", err)
	}
	return f, rc, nil
}

// recvmsg reads one datagram from rc into b, waiting in the netpoller.
func recvmsg(rc syscall.RawConn, b []byte) (n, flags int, from unix.Sockaddr, err error) {
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		n, _, flags, from, rerr = unix.Recvmsg(int(fd), b, nil, 0)
		return rerr != unix.EAGAIN
	})
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			return 0, 0, nil, fmt.Errorf("netmon: netlink: %w", net.ErrClosed)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, 0, nil, fmt.Errorf("netmon: netlink: kernel did not answer: %w", err)
		}
		return 0, 0, nil, fmt.Errorf("netmon: netlink: %w", err)
	}
	return n, flags, from, rerr
}

// Receive returns when a datagram carrying a link, address or default
// route message arrived (see classify), or when the kernel dropped events
// (ENOBUFS): in each case the Monitor re-reads everything.
func (nm *netlinkMon) Receive() (urgent bool, err error) {
	for {
		n, flags, from, err := recvmsg(nm.evConn, nm.evBuf)
		switch {
		case err == unix.ENOBUFS:
			nm.log.Debug("netmon: netlink events lost (ENOBUFS), resyncing")
			return true, nil
		case err != nil:
			return false, err
		case !fromKernel(from):
			continue
		case flags&unix.MSG_TRUNC != 0:
			return true, nil // resync
		}
		if relevant, urgent := classify(nm.evBuf[:n]); relevant {
			return urgent, nil
		}
	}
}

// fromKernel reports whether a datagram was sent by the kernel, not by
// another process of the namespace.
func fromKernel(sa unix.Sockaddr) bool {
	nl, ok := sa.(*unix.SockaddrNetlink)
	return ok && nl.Pid == 0
}

// State dumps links, addresses and routes on the request socket.
func (nm *netlinkMon) State() (State, error) {
	for range dumpRetries {
		var sb stateBuilder
		intr := false
		for _, typ := range [...]uint16{rtmGetLink, rtmGetAddr, rtmGetRoute} {
			i, err := nm.dump(typ, &sb)
			if err != nil {
				return State{}, err
			}
			intr = intr || i
		}
		if !intr {
			return sb.state(), nil
		}
		nm.log.Debug("netmon: netlink dump interrupted by a change, redoing it")
	}
	return State{}, errors.New("netmon: netlink dumps keep being interrupted")
}

// dump runs one dump request and folds its replies into sb. interrupted is
// true if the kernel flagged the dump inconsistent (NLM_F_DUMP_INTR).
func (nm *netlinkMon) dump(typ uint16, sb *stateBuilder) (interrupted bool, err error) {
	nm.seq++
	seq := nm.seq
	req := appendDumpRequest(nil, typ, seq)
	var serr error
	err = nm.reqConn.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err = cmp.Or(err, serr); err != nil {
		return false, fmt.Errorf("netmon: netlink dump request: %w", err)
	}
	if err := nm.req.SetReadDeadline(time.Now().Add(dumpTimeout)); err != nil {
		return false, fmt.Errorf("netmon: netlink: %w", err)
	}
	for {
		n, flags, from, err := recvmsg(nm.reqConn, nm.reqBuf)
		if err != nil {
			return false, fmt.Errorf("netmon: netlink dump: %w", err)
		}
		if !fromKernel(from) {
			continue
		}
		if flags&unix.MSG_TRUNC != 0 {
			return false, errors.New("netmon: netlink dump reply truncated")
		}
		for b := nm.reqBuf[:n]; len(b) > 0; {
			m, used, err := parseMessage(b)
			if err != nil {
				return false, err
			}
			b = b[used:]
			if m.Seq != seq {
				continue // a reply to an earlier, abandoned request
			}
			interrupted = interrupted || m.Flags&nlmFDumpIntr != 0
			switch m.Kind {
			case kindDone:
				return interrupted, nil
			case kindError:
				return false, fmt.Errorf("netmon: netlink dump: %w", syscall.Errno(-m.Errno))
			}
			sb.add(&m)
		}
	}
}

func (nm *netlinkMon) Close() error {
	return errors.Join(nm.ev.Close(), nm.req.Close())
}
