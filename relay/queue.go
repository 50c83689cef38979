package relay

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
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

// River's job table is river_job on both databases.

func (s *sqliteBackend) queueDepth(ctx context.Context, states []string) (map[string]int64, error) {
	args := []any{QueueName}
	for _, st := range states {
		args = append(args, st)
	}
	q := `SELECT state, count(*) FROM river_job WHERE queue = ? AND state IN (?` + strings.Repeat(", ?", len(states)-1) + `) GROUP BY state`
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[st] = n
	}
	return out, rows.Err()
}

func (p *pgBackend) queueDepth(ctx context.Context, states []string) (map[string]int64, error) {
	rows, err := p.pool.Query(ctx, `SELECT state::text, count(*) FROM river_job WHERE queue = $1 AND state::text = ANY($2) GROUP BY state`, QueueName, states)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	var st string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&st, &n}, func() error {
		out[st] = n
		return nil
	})
	return out, err
}
