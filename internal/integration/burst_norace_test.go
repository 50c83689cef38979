//go:build !race

package integration

import "testing"

// TestExactlyOnceBurstHarsh: 400 calls, 2,400 webhooks at once over three
// instances. A call's duplicate deliveries share one decision instead of
// waiting on each other, so the burst is mostly answered with read-backs:
// at most 5% holds, and every answer inside the answer deadline as measured
// inside the server.
//
// A capacity test, so it is built without the race detector only: under it
// the same machine has a fraction of the capacity. .ci/run runs it after
// the README's (race-enabled) test command.
func TestExactlyOnceBurstHarsh(t *testing.T) {
	burst(t, 400, 0.05)
}
