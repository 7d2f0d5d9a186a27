package udpnotify_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/tcprocks"
	"github.com/rockudp/rockudp/udpnotify"
)

// The sending side: accept rocks, run a session on each, and send to wherever the receiver
// is now.
func ExampleServer() {
	l, err := tcprocks.Listen("tcp", ":5004", nil)
	if err != nil {
		log.Fatal(err)
	}
	for {
		rock, err := l.AcceptConn()
		if err != nil {
			return
		}
		go func() {
			cfg := &udpnotify.Config{Handler: callbacks.HandlerFunc(func(e callbacks.Event) {
				if e.Kind == callbacks.PeerMoved {
					fmt.Println("receiver moved:", e.From, "->", e.To)
				}
			})}
			s, err := udpnotify.Server(context.Background(), rock, nil, cfg)
			if err != nil {
				return
			}
			defer s.Close()
			pc := s.PacketConn()
			for range time.Tick(20 * time.Millisecond) {
				if _, err := pc.Write([]byte("media")); err != nil && err != udpnotify.ErrNoPath {
					return
				}
			}
		}()
	}
}

// The receiving side: dial the sender and read its datagrams, wherever this host moves.
func ExampleDial() {
	s, err := udpnotify.Dial(context.Background(), "sender.example:5004", nil, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	b := make([]byte, 1500)
	for {
		n, info, err := s.PacketConn().ReadDatagram(b)
		if err != nil {
			return
		}
		fmt.Printf("%d bytes at %v from %v\n", n, info.Dst, info.From)
	}
}
