package ivr

import (
	"testing"
	"time"
)

func TestAdmissionAdapts(t *testing.T) {
	a := newAdmission(2, 8)
	for range 8 {
		if !a.acquire(0) {
			t.Fatal("a slot under the limit was refused")
		}
	}
	if a.acquire(10 * time.Millisecond) {
		t.Fatal("a ninth slot was granted over a limit of 8")
	}
	// Work missing its deadline cuts the limit once per cooldown, however
	// many fail together.
	for range 4 {
		a.release(false)
	}
	if limit, inflight := a.current(); limit != 5 || inflight != 4 { // 8 × 0.7
		t.Fatalf("after a burst of late work: limit %d, in flight %d; want 5, 4", limit, inflight)
	}
	if !a.acquire(0) || a.acquire(10*time.Millisecond) {
		t.Fatal("the cut limit is not what acquire enforces")
	}
	// Work in time raises it again, one slot each, up to the maximum.
	for range 5 {
		a.release(true)
	}
	if limit, inflight := a.current(); limit != 8 || inflight != 0 {
		t.Fatalf("after work in time: limit %d, in flight %d; want 8, 0", limit, inflight)
	}
	// Cuts stop at the minimum.
	for range 10 {
		a.acquire(0)
		a.lastCut = time.Time{}
		a.release(false)
	}
	if limit, _ := a.current(); limit != 2 {
		t.Fatalf("limit %d after many cuts, want the minimum 2", limit)
	}
}

// A waiter is admitted as soon as a slot frees, not after its wait.
func TestAdmissionWakesWaiter(t *testing.T) {
	a := newAdmission(1, 1)
	a.acquire(0)
	got := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		if !a.acquire(5 * time.Second) {
			t.Error("waiter refused")
		}
		got <- time.Since(start)
	}()
	time.Sleep(20 * time.Millisecond)
	a.release(true)
	if took := <-got; took > 2*time.Second {
		t.Fatalf("waiter admitted after %v", took)
	}
}

// Past capacity a freed slot goes to the newest waiter, which has the most
// of its webhook's budget left; a full queue pushes its oldest waiter out
// at once rather than let it wait for a slot it would not get in time.
func TestAdmissionServesNewestFirst(t *testing.T) {
	a := newAdmission(1, 1)
	a.maxQueue = 2
	a.acquire(0)
	outcome := make(chan string, 3)
	wait := func(name string) {
		if a.acquire(5 * time.Second) {
			outcome <- name + " admitted"
		} else {
			outcome <- name + " refused"
		}
	}
	queued := func(n int) {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			a.mu.Lock()
			l := a.waiting.Len()
			a.mu.Unlock()
			if l == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("queue never reached %d", n)
			}
		}
	}
	go wait("oldest")
	queued(1)
	go wait("middle")
	queued(2)
	go wait("newest") // the queue is full: the oldest leaves it
	if got := <-outcome; got != "oldest refused" {
		t.Fatalf("first outcome %q, want the oldest refused", got)
	}
	queued(2)
	a.release(true)
	if got := <-outcome; got != "newest admitted" {
		t.Fatalf("after a release: %q, want the newest admitted", got)
	}
	a.release(true)
	if got := <-outcome; got != "middle admitted" {
		t.Fatalf("after a second release: %q, want the middle admitted", got)
	}
}
