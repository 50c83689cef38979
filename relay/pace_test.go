package relay

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// The pacer hands out a second's worth at once, then spaces the rest; a
// turn further than the bound is a snooze that takes nothing, and a pause
// (a Retry-After) holds every turn back.
func TestPacer(t *testing.T) {
	ctx := context.Background()
	p := newPacer(5)
	for i := range 5 {
		if d, err := p.wait(ctx, 0); d != 0 || err != nil {
			t.Fatalf("turn %d of the burst: snooze %s, %v", i, d, err)
		}
	}
	d, _ := p.wait(ctx, 0)
	if d <= 0 || d > 200*time.Millisecond {
		t.Fatalf("sixth turn at once: snooze %s, want up to 200ms", d)
	}
	// The snooze gave its token back: the next turn is no later.
	if d2, _ := p.wait(ctx, 0); d2 > d {
		t.Fatalf("a snooze kept its token: next turn %s after %s", d2, d)
	}
	p.pause(time.Minute)
	if d, _ := p.wait(ctx, MaxPaceWait); d < 59*time.Second {
		t.Fatalf("during a Retry-After pause: snooze %s, want about a minute", d)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	q := newPacer(1)
	q.lim = rate.NewLimiter(1, 1)
	_, _ = q.wait(ctx, 0)
	if _, err := q.wait(cctx, MaxPaceWait); err == nil {
		t.Fatal("a cancelled wait returned no error")
	}
}

// rateLimitedHook is a catch hook that enforces a limit as Zapier does: at
// most limit requests accepted in any window (a sliding log, stricter than
// fixed windows), 429 with Retry-After (whole seconds, until the oldest
// accepted request leaves the window) beyond it.
type rateLimitedHook struct {
	limit  int
	window time.Duration
	// refuseFirst: the first request is refused (the quota spent by
	// others), so that a Retry-After is always met.
	refuseFirst bool

	mu       sync.Mutex
	accepted []time.Time // within the last window
	hits     []hookHit
}

type hookHit struct {
	id     string
	at     time.Time
	status int
	until  time.Time // 429: no request for this event before it
}

func (h *rateLimitedHook) respond(_ int, w http.ResponseWriter, r *http.Request, _ []byte) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.accepted) > 0 && now.Sub(h.accepted[0]) >= h.window {
		h.accepted = h.accepted[1:]
	}
	hit := hookHit{id: r.Header.Get(HeaderID), at: now, status: http.StatusOK}
	if len(h.accepted) >= h.limit || h.refuseFirst && len(h.hits) == 0 {
		secs := 1
		if len(h.accepted) > 0 {
			secs = max(1, int(math.Ceil(h.accepted[0].Add(h.window).Sub(now).Seconds())))
		}
		hit.status, hit.until = http.StatusTooManyRequests, now.Add(time.Duration(secs)*time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	} else {
		h.accepted = append(h.accepted, now)
	}
	h.hits = append(h.hits, hit)
	w.WriteHeader(hit.status)
}

func TestSQLitePacedBurstMeetsRateLimit(t *testing.T) {
	runPacedBurst(t, func(o envOpts) *env { return newSQLiteEnv(t, o) })
}

func TestPostgresPacedBurstMeetsRateLimit(t *testing.T) {
	runPacedBurst(t, func(o envOpts) *env { return newPGEnv(t, o) })
}

// runPacedBurst queues a burst of events for a hook that accepts a little
// more than the pacer sends in any second (its burst plus its rate), and
// refuses the very first request with a Retry-After. Every event arrives
// exactly once; no event is sent again before its Retry-After; the 429s
// are that first one and a few for timing (the pacer counts when a request
// leaves, the hook when it arrives). Without the pacer, 16 workers draw a
// 429 for most events past each window's quota (105 of 120 when tried).
func runPacedBurst(t *testing.T, newEnv func(envOpts) *env) {
	const (
		events = 120
		perSec = 20
		// A second's burst and a second's rate, and some headroom, as
		// RELAY_RATE_LIMIT's default leaves under Zapier's limit.
		hookLimit = 2*perSec + 5
		max429s   = 5
	)
	hook := &rateLimitedHook{limit: hookLimit, window: time.Second, refuseFirst: true}
	e := newEnv(envOpts{respond: hook.respond, rate: perSec})
	ctx := context.Background()
	want := map[string]bool{}
	for i := range events {
		id := fmt.Sprintf("rec_burst_%03d", i)
		want[id] = true
		if _, _, err := e.store.Record(ctx, record(t, e.keyring, id, fmt.Sprintf("CA_BURST_%03d", i))); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	e.start(t)

	var hits []hookHit
	deadline := time.Now().Add(60 * time.Second)
	for {
		hook.mu.Lock()
		hits = append(hits[:0], hook.hits...)
		hook.mu.Unlock()
		ok := 0
		for _, h := range hits {
			if h.status == http.StatusOK {
				ok++
			}
		}
		if ok >= events {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events delivered within 60 s (%d requests)", ok, events, len(hits))
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a duplicate would show by now
	hook.mu.Lock()
	hits = append(hits[:0], hook.hits...)
	hook.mu.Unlock()

	delivered := map[string]int{}
	notBefore := map[string]time.Time{}
	var tooMany int
	var first, last time.Time
	for _, h := range hits {
		if !want[h.id] {
			t.Errorf("request for unknown event %q", h.id)
		}
		if nb := notBefore[h.id]; h.at.Before(nb) {
			t.Errorf("event %s sent again %s before its Retry-After", h.id, nb.Sub(h.at))
		}
		switch h.status {
		case http.StatusOK:
			delivered[h.id]++
			if first.IsZero() {
				first = h.at
			}
			last = h.at
		case http.StatusTooManyRequests:
			tooMany++
			notBefore[h.id] = h.until
		}
	}
	for id := range want {
		if delivered[id] != 1 {
			t.Errorf("event %s delivered %d times, want exactly once", id, delivered[id])
		}
	}
	if tooMany > max429s {
		t.Errorf("%d answers were 429, want at most %d: deliveries are not paced", tooMany, max429s)
	}
	t.Logf("%d events in %s: %d requests, %d of them 429; accepted at %.1f/s (limit %d/s paced, hook %d per %s)",
		events, last.Sub(start).Round(time.Millisecond), len(hits), tooMany,
		float64(events-1)/last.Sub(first).Seconds(), perSec, hook.limit, hook.window)
}
