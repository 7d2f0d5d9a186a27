package tcprocks

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(agentEnv); role != "" {
		// An agent process (agent_test.go): it exits here, before goleak or any test.
		os.Exit(runAgent(role, os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}
