package ivr

import (
	"container/list"
	"sync"
	"sync/atomic"
	"time"
)

// admission bounds the decision work an instance runs at once, with a limit
// that adapts to what the instance can finish in time (additive increase,
// multiplicative decrease, as TCP's congestion control), and decides which
// waiting work gets a freed slot.
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
//
// The queue of work waiting for a slot is served newest first (the
// "adaptive LIFO" of Facebook's "Fail at Scale", 2015), and bounded. First
// come, first served is the wrong order past capacity: the oldest waiter
// has the least of its webhook's budget left, so under a sustained burst
// each slot goes to work that then misses its deadline, the limit is cut,
// and throughput collapses to nothing while every caller hears a hold line.
// Newest first gives a slot to work that has its whole budget ahead of it,
// and a full queue pushes its oldest waiter out at once (its caller hears
// the hold line now and answers again) rather than after a wait it could
// not win. A burst that fits in the queue is absorbed whatever the order.
type admission struct {
	mu       sync.Mutex
	limit    float64
	min, max float64
	inflight int
	lastCut  time.Time
	// waiting holds *waiter, oldest at the front; a freed slot is handed
	// to one of them (not announced to all: hundreds of waiters woken for
	// one slot cost more CPU than the work they wait for). A list, since
	// a waiter whose wait ran out leaves from anywhere in it.
	waiting  list.List
	maxQueue int
	// queued mirrors waiting.Len() for readers that do not take mu
	// (intake asks it of every webhook).
	queued atomic.Int32
}

type waiter struct {
	// granted gets the outcome once: true, a slot was handed over; false,
	// the waiter was pushed out of a full queue.
	granted chan bool
	elem    *list.Element // nil once it has left the queue
}

const (
	// admissionCooldown is the shortest time between two cuts of the limit.
	admissionCooldown = 200 * time.Millisecond
	// queuePerSlot bounds the queue at this many waiters per slot of the
	// maximum: about what the slots finish within AdmitWait (a decision
	// takes 10 to 50 ms at full load); a longer queue could not start in
	// time. (4 per slot held 14% of a 400-call burst's answers that 16
	// absorbs: BenchmarkBurst.)
	queuePerSlot = 16
)

func newAdmission(min, max int) *admission {
	return &admission{limit: float64(max), min: float64(min), max: float64(max), maxQueue: queuePerSlot * max}
}

// acquire takes a slot, waiting at most wait; false means none was free in
// time, or the queue was full and newer work pushed this out.
func (a *admission) acquire(wait time.Duration) bool {
	a.mu.Lock()
	if a.waiting.Len() == 0 && a.inflight < int(a.limit) {
		a.inflight++
		a.mu.Unlock()
		return true
	}
	if wait <= 0 {
		a.mu.Unlock()
		return false
	}
	if a.waiting.Len() >= a.maxQueue {
		// Full: the oldest waiter would be the last served; it hears the
		// hold line now instead of after its wait.
		oldest := a.waiting.Remove(a.waiting.Front()).(*waiter)
		oldest.elem = nil
		oldest.granted <- false
	}
	w := &waiter{granted: make(chan bool, 1)}
	w.elem = a.waiting.PushBack(w)
	a.queued.Store(int32(a.waiting.Len()))
	a.mu.Unlock()

	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case ok := <-w.granted:
		return ok
	case <-timer.C:
	}
	a.mu.Lock()
	if w.elem != nil {
		a.waiting.Remove(w.elem)
		a.queued.Store(int32(a.waiting.Len()))
		w.elem = nil
		a.mu.Unlock()
		return false
	}
	a.mu.Unlock()
	return <-w.granted // decided just as the wait ran out
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
	for a.waiting.Len() > 0 && a.inflight < int(a.limit) {
		newest := a.waiting.Remove(a.waiting.Back()).(*waiter)
		a.queued.Store(int32(a.waiting.Len()))
		newest.elem = nil
		a.inflight++
		newest.granted <- true
	}
}

// saturated reports whether work is waiting for a slot: the instance is
// at its capacity.
func (a *admission) saturated() bool { return a.queued.Load() > 0 }

// current reports the limit and the work in flight.
func (a *admission) current() (limit, inflight int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return int(a.limit), a.inflight
}
