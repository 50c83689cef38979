package ivr

import (
	"sync"
	"time"
)

// admission bounds the decision work an instance runs at once, with a limit
// that adapts to what the instance can finish in time (additive increase,
// multiplicative decrease, as TCP's congestion control).
//
// A fixed limit is either too low for a fast machine or too high for a
// slow or overloaded one: past its capacity every admitted decision queues
// on the same database and Redis connections, each misses its deadline,
// the timed-out commands cost connections and cancel requests, and the
// instance does no useful work at all until the burst is long over. So
// every decision that finishes in time raises the limit by one (up to
// max); one that misses its deadline lowers it to 70% (down to min), at
// most once per cooldown, since the decisions admitted together fail
// together.
type admission struct {
	mu       sync.Mutex
	limit    float64
	min, max float64
	inflight int
	lastCut  time.Time
	// waiting is the queue of acquires waiting for a slot, first come
	// first served; a freed slot is handed to the first of them (not
	// announced to all: hundreds of waiters woken for one slot cost more
	// CPU than the work they wait for).
	waiting []*waiter
}

type waiter struct {
	granted chan struct{} // closed when a slot is handed over
}

// admissionCooldown is the shortest time between two cuts of the limit.
const admissionCooldown = 200 * time.Millisecond

func newAdmission(min, max int) *admission {
	return &admission{limit: float64(max), min: float64(min), max: float64(max)}
}

// acquire takes a slot, waiting at most wait; false means none was free.
func (a *admission) acquire(wait time.Duration) bool {
	a.mu.Lock()
	if len(a.waiting) == 0 && a.inflight < int(a.limit) {
		a.inflight++
		a.mu.Unlock()
		return true
	}
	w := &waiter{granted: make(chan struct{})}
	a.waiting = append(a.waiting, w)
	a.mu.Unlock()

	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-w.granted:
		return true
	case <-timer.C:
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, o := range a.waiting {
		if o == w {
			a.waiting = append(a.waiting[:i], a.waiting[i+1:]...)
			return false
		}
	}
	return true // handed a slot just as the wait ran out
}

// release frees a slot; inTime says whether its work finished within its
// webhook's deadline.
func (a *admission) release(inTime bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.inflight--
	if inTime {
		a.limit = min(a.max, a.limit+1)
	} else if now := time.Now(); now.Sub(a.lastCut) >= admissionCooldown {
		a.limit = max(a.min, a.limit*0.7)
		a.lastCut = now
	}
	for len(a.waiting) > 0 && a.inflight < int(a.limit) {
		w := a.waiting[0]
		a.waiting[0] = nil
		a.waiting = a.waiting[1:]
		a.inflight++
		close(w.granted)
	}
}

// current reports the limit and the work in flight.
func (a *admission) current() (limit, inflight int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return int(a.limit), a.inflight
}
