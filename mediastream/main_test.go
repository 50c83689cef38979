package mediastream_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// BenchmarkConcurrentStreams starts this binary again as its client.
	if spec := os.Getenv(benchClientEnv); spec != "" {
		if err := runBenchClient(spec); err != nil {
			fmt.Fprintln(os.Stderr, "bench client:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}
