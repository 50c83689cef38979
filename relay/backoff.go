package relay

import (
	"math/rand/v2"
	"time"
)

// Backoff is the delivery retry schedule: exponential from Base, capped at
// Cap, with "equal jitter" (each delay is uniformly drawn from [d/2, d)) so
// that many events failing together during an outage don't come back in
// lockstep. MaxAttempts is derived from the schedule so that, even with the
// smallest possible jitter, the retries span at least Span.
//
// The delivery worker's NextRetry applies it (see jobs.go). Now and Rand are
// injected so tests drive time instead of sleeping.
type Backoff struct {
	Base time.Duration
	Cap  time.Duration
	Span time.Duration
	// MaxRetryAfter bounds how long a receiver's Retry-After is honoured
	// (a snooze, see deliverWorker): a longer one is taken as this long.
	MaxRetryAfter time.Duration

	Now  func() time.Time
	Rand func() float64 // in [0, 1)
}

// DefaultBackoff: 30 s doubling to 1 h, for at least 24 h; a Retry-After
// is honoured up to 1 h, the longest the backoff itself ever waits (Zapier's
// own rate limit counts 5-minute windows).
func DefaultBackoff() Backoff {
	return Backoff{Base: 30 * time.Second, Cap: time.Hour, Span: 24 * time.Hour, MaxRetryAfter: time.Hour}
}

// capRetryAfter bounds a receiver's Retry-After by MaxRetryAfter.
func (b Backoff) capRetryAfter(d time.Duration) time.Duration {
	if b.MaxRetryAfter > 0 {
		return min(d, b.MaxRetryAfter)
	}
	return d
}

// ceiling returns the un-jittered delay after the n-th failure (n >= 1).
func (b Backoff) ceiling(n int) time.Duration {
	d := b.Base
	for i := 1; i < n && d < b.Cap; i++ {
		d *= 2
	}
	return min(d, b.Cap)
}

// Delay returns the jittered delay after the n-th failure.
func (b Backoff) Delay(n int) time.Duration {
	d := b.ceiling(max(n, 1))
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	return d/2 + time.Duration(r()*float64(d/2))
}

// MinDelay is the smallest Delay(n) can be.
func (b Backoff) MinDelay(n int) time.Duration { return b.ceiling(max(n, 1)) / 2 }

// MaxAttempts is the number of attempts (the first one plus retries) whose
// retry delays add up to at least Span in the worst case of jitter.
func (b Backoff) MaxAttempts() int {
	var total time.Duration
	retries := 0
	for total < b.Span {
		retries++
		total += b.MinDelay(retries)
	}
	return retries + 1
}

// MinSpan is the shortest total time the retries of MaxAttempts attempts can
// take.
func (b Backoff) MinSpan() time.Duration {
	var total time.Duration
	for n := 1; n < b.MaxAttempts(); n++ {
		total += b.MinDelay(n)
	}
	return total
}

func (b Backoff) now() time.Time {
	if b.Now != nil {
		return b.Now()
	}
	return time.Now()
}

// NextRetryAfter is when to retry after the n-th failure, waiting at least
// retryAfter (a receiver's Retry-After, bounded by MaxRetryAfter). Taking
// the larger of the two both honours the receiver and keeps the ≥Span
// guarantee, which a short Retry-After would otherwise erode.
func (b Backoff) NextRetryAfter(n int, retryAfter time.Duration) time.Time {
	return b.now().Add(max(b.Delay(n), b.capRetryAfter(retryAfter)))
}
