package relay

import (
	"context"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// DefaultRateLimit is how many deliveries per second a relay sends to its
// catch hook by default (RELAY_RATE_LIMIT). A Zapier Catch Hook answers 429
// beyond 10,000 requests in 5 minutes, 33⅓ a second; 30 a second with a
// one-second burst sends at most 9,030 in any 5 minutes.
const DefaultRateLimit = 30

// MaxRateLimit bounds RELAY_RATE_LIMIT: far above any catch hook's limit,
// low enough that a typo (30000) is refused rather than taken for no pacing.
const MaxRateLimit = 1000

// MaxPaceWait is the longest a delivery waits in its worker for its turn
// (a token, or the end of a receiver's Retry-After). A longer wait is a
// River snooze instead: the worker is freed and the job comes back when its
// turn is near. It is well under the job timeout's margin over an attempt
// (jobTimeoutMargin), so a wait and a full attempt fit in one job.
const MaxPaceWait = 2 * time.Second

// pacer spaces the deliveries to one catch hook: a token bucket of rate
// per second holding a second's worth (at least one), and a hook-wide pause
// after a Retry-After, since a rate limit's Retry-After speaks for every
// request to the hook, not only the one refused. A Relay delivers to one
// URL, so one pacer per Relay is one per hook URL (and per instance: N
// replicas send up to N times the rate).
//
// It runs on the real clock, not Config.Now: it spaces real requests to a
// real receiver, and a test's driven clock would never refill it.
type pacer struct {
	lim *rate.Limiter

	mu    sync.Mutex
	until time.Time // no request before this (the last Retry-After)
}

func newPacer(perSecond float64) *pacer {
	if perSecond <= 0 {
		perSecond = DefaultRateLimit
	}
	burst := max(1, int(math.Floor(perSecond)))
	return &pacer{lim: rate.NewLimiter(rate.Limit(perSecond), burst)}
}

// pause holds every request to the hook for d (a Retry-After).
func (p *pacer) pause(d time.Duration) {
	if d <= 0 {
		return
	}
	until := time.Now().Add(d)
	p.mu.Lock()
	if until.After(p.until) {
		p.until = until
	}
	p.mu.Unlock()
}

// wait blocks until the delivery may be sent, for at most maxWait. A longer
// turn is not waited for: wait returns it as snooze (> 0), having taken
// nothing, for the job to come back then. err is ctx's if it ended first.
func (p *pacer) wait(ctx context.Context, maxWait time.Duration) (snooze time.Duration, err error) {
	p.mu.Lock()
	paused := time.Until(p.until)
	p.mu.Unlock()
	if paused > maxWait {
		return paused, nil
	}
	if paused > 0 {
		if err := sleep(ctx, paused); err != nil {
			return 0, err
		}
		maxWait -= paused
	}
	r := p.lim.Reserve() // never !OK: the burst is at least 1
	d := r.Delay()
	if d > maxWait {
		r.Cancel() // give the token back for a job whose turn it is
		return d, nil
	}
	if err := sleep(ctx, d); err != nil {
		r.Cancel()
		return 0, err
	}
	return 0, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
