package e2e

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/consentline/consentline/relay"
)

// simClock is the simulated time: the real time plus an offset the test
// moves forward. It never runs behind the real clock, as the relay requires
// of an injected clock (jobs are inserted on the database's clock).
type simClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *simClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

// advanceTo moves the clock to t if t is later.
func (c *simClock) advanceTo(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := time.Until(t); d > c.offset {
		c.offset = d
	}
}

// TestZapierDownTenMinutes: the catch hook answers 503 to everything until
// the simulated clock has passed 10 minutes, then 200. Every event must
// arrive, with retries spaced by the relay's real backoff schedule, signed
// at the (simulated) time of each attempt.
//
// It runs at the level of a Relay with its real River client on PostgreSQL,
// not through the worker alone (as relay's own 24-hour test does): the
// relay's clock (relay.Config.Now) is the simulated one, and River runs on
// it too (the relay hands it to river.Config.Test.Time). The test moves the
// clock to the latest scheduled retry whenever every job is waiting for
// one; River's leader then makes them available on its next scheduler run
// (every 5 s of real time), so each backoff step costs at most that, and 10
// simulated minutes take some 15-30 real seconds.
func TestZapierDownTenMinutes(t *testing.T) {
	t.Parallel()
	const (
		events = 20
		outage = 10 * time.Minute
	)
	ctx := context.Background()
	clock := &simClock{}
	start := clock.Now()
	hook := newCatchHook(t)
	var mu sync.Mutex
	attempts := map[string][]time.Time{} // event id -> simulated time of each attempt
	hook.setOnArrive(func(r *hookReq) {
		mu.Lock()
		attempts[r.Event.ID] = append(attempts[r.Event.ID], clock.Now())
		mu.Unlock()
	})
	hook.setPolicy(func(*hookReq, *http.Request) int {
		if clock.Now().Sub(start) < outage {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	st := newStack(t, stackOptions{hookURL: hook.hookURL(), configure: func(c *relay.Config) { c.Now = clock.Now }})

	ids := make([]string, events)
	for i := range events {
		rec, err := st.decide(ctx, callSID("0a7a6e", i), i)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = rec.ID
	}
	st.start(t)

	realStart := time.Now()
	deadline := realStart.Add(90 * time.Second)
	for len(hook.delivered()) < events {
		if time.Now().After(deadline) {
			t.Fatalf("after %s (simulated %s): %d of %d delivered", time.Since(realStart), clock.Now().Sub(start), len(hook.delivered()), events)
		}
		jobs := deliveryJobs(t, st)
		waiting, latest := true, time.Time{}
		for _, j := range jobs {
			switch j.state {
			case "retryable":
				if j.scheduledAt.After(latest) {
					latest = j.scheduledAt
				}
			case "completed":
			case "cancelled", "discarded":
				t.Fatalf("a delivery was given up during the outage: %+v", j)
			default: // available, running: River is at work
				waiting = false
			}
		}
		if waiting && !latest.IsZero() {
			clock.advanceTo(latest.Add(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%d events delivered after a simulated %s outage in %s of real time",
		events, clock.Now().Sub(start).Round(time.Second), time.Since(realStart).Round(100*time.Millisecond))

	// Every attempt: the event's own webhook-id, the same body, a signature
	// that verifies at the simulated time it was sent.
	bodies := map[string][]byte{}
	for _, r := range hook.requests() {
		if r.Header.Get(relay.HeaderID) != r.Event.ID {
			t.Errorf("webhook-id %q for event %q", r.Header.Get(relay.HeaderID), r.Event.ID)
		}
		if b, ok := bodies[r.Event.ID]; ok && !bytes.Equal(b, r.Body) {
			t.Errorf("event %s: retry changed the body", r.Event.ID)
		}
		bodies[r.Event.ID] = r.Body
	}
	delivered := hook.delivered()
	b := relay.DefaultBackoff()
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		d, ok := delivered[id]
		if !ok {
			t.Errorf("event %s lost", id)
			continue
		}
		at := attempts[id]
		if err := st.signer.Verify(d.Header, d.Body, at[len(at)-1], relay.DefaultTolerance); err != nil {
			t.Errorf("event %s: signature at its simulated send time: %v", id, err)
		}
		if last := at[len(at)-1]; last.Sub(start) < outage {
			t.Errorf("event %s delivered %s into a %s outage", id, last.Sub(start), outage)
		}
		if len(at) < 2 || len(at) > relay.MaxDeliveryAttempts() {
			t.Errorf("event %s: %d attempts", id, len(at))
		}
		for n := 1; n < len(at); n++ {
			if gap := at[n].Sub(at[n-1]); gap < b.MinDelay(n) {
				t.Errorf("event %s: retry %d came %s after failure %d, backoff says at least %s", id, n, gap, n, b.MinDelay(n))
			}
		}
	}
	if res, err := st.relay.VerifyAudit(ctx); err != nil || res.Entries != events {
		t.Errorf("audit: %+v %v", res, err)
	}
	assertNoPHI(t, "relay logs", st.logs.String())
}

type deliveryJob struct {
	id          int64
	state       string
	attempt     int
	scheduledAt time.Time
}

// deliveryJobs reads the relay's River jobs straight from the table.
func deliveryJobs(t testing.TB, st *stack) []deliveryJob {
	t.Helper()
	rows, err := st.pool.Query(context.Background(),
		`SELECT id, state::text, attempt, scheduled_at FROM river_job WHERE kind = $1 ORDER BY id`, relay.DeliverKind)
	if err != nil {
		t.Fatal(err)
	}
	jobs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (deliveryJob, error) {
		var j deliveryJob
		err := r.Scan(&j.id, &j.state, &j.attempt, &j.scheduledAt)
		return j, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return jobs
}
