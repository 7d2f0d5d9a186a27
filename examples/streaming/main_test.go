package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

// agentEnv makes the test binary run the example itself (sender or receiver, with the
// arguments that follow): the lab tests start it so inside network namespaces.
const agentEnv = "ROCKUDP_STREAMING_AGENT"

func TestMain(m *testing.M) {
	if os.Getenv(agentEnv) != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	goleak.VerifyTestMain(m)
}
