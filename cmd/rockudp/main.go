// Command rockudp keeps network conversations alive while the machines under them move.
//
// It is one CLI for everything rockudp offers: detecting enhanced peers (edp), reliable
// sockets (serve, connect), UDP tunnels, the DNS locator, status and benchmarks. Run
// "rockudp demo" for a self-contained showcase on loopback.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rockudp:", err)
		os.Exit(1)
	}
}
