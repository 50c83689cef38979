package relay

import (
	"context"
	"fmt"

	"github.com/riverqueue/river/rivertype"
)

// queuedStates are the River states of a delivery not yet finished: what
// the queue depth counts (finished ones are history; dead letters are
// `relay list --failed`'s).
var queuedStates = []string{
	string(rivertype.JobStateAvailable), string(rivertype.JobStatePending), string(rivertype.JobStateRetryable),
	string(rivertype.JobStateRunning), string(rivertype.JobStateScheduled),
}

// QueueDepth counts the deliveries waiting or running, per River job
// state, on this database (every instance on it shares the queue). It is
// what serve's queue depth gauge reads on each scrape, so it is one
// grouped count over River's job table, which River indexes by state and
// queue.
func (r *Relay) QueueDepth(ctx context.Context) (map[string]int64, error) {
	depth, err := r.b.queueDepth(ctx, queuedStates)
	if err != nil {
		return nil, fmt.Errorf("relay: queue depth: %w", err)
	}
	return depth, nil
}
