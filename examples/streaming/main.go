// Command streaming is a media sender and receiver that follow a moving receiver with
// package udpnotify: the media (RTP, 50 packets/s of 1,200 B) stays on UDP, a rock carries
// the signalling, and when the receiver's address changes the sender re-targets within one
// reconnection. Run the receiver with --no-udpnotify and the same move stops the stream for
// good. See README.md.
//
//	go run ./examples/streaming sender   --listen ADDR [--psk-file F | --no-auth]
//	go run ./examples/streaming receiver --sender HOST:PORT --duration D [--no-udpnotify] [--psk-file F]
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rockudp/rockudp/edp"
	"github.com/rockudp/rockudp/internal/pskauth"
	"github.com/rockudp/rockudp/tcprocks"
)

// The first byte a receiver writes on its rock says what it wants.
const (
	modeSession = 'U' // a udpnotify session follows
	modeStatic  = 'S' // a 2-byte UDP port follows: stream there, whatever happens (the control)
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the sender or the receiver and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: streaming sender|receiver [flags] (see -h of each)")
		return 2
	}
	var err error
	switch args[0] {
	case "sender":
		err = runSender(ctx, args[1:], stdout, stderr)
	case "receiver":
		err = runReceiver(ctx, args[1:], stdout, stderr)
	default:
		err = fmt.Errorf("unknown command %q: want sender or receiver", args[0])
	}
	if errors.Is(err, errUsage) {
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "streaming:", err)
		return 1
	}
	return 0
}

// errUsage: the flags were wrong (the flag package has printed why).
var errUsage = errors.New("usage")

// newLogger logs to w: warnings and information, and debug messages too if verbose.
func newLogger(w io.Writer, verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// rockConfig returns the rocks' configuration: with a key file, the pre-shared key is mixed
// into the key schedule and proven at initialisation and at every reconnection, as
// `rockudp serve --psk-file` does.
func rockConfig(pskFile string, log *slog.Logger) (*tcprocks.Config, error) {
	// Receivers always speak first (the mode byte), so the sender can wait long for the first
	// byte before it takes a connection for plain TCP: a slow client is never mistaken for one.
	cfg := &tcprocks.Config{Logger: log, EDP: &edp.Config{FirstByteWait: 5 * time.Second, Logger: log}}
	if pskFile == "" {
		return cfg, nil
	}
	key, err := pskauth.LoadFile(pskFile)
	if err != nil {
		return nil, err
	}
	cfg.PSK, cfg.RequireEnhanced = key, true // confirmed by tcprocks at initialisation
	return cfg, nil
}
