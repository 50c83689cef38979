package groupcommit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// double commits ints, doubling them; a negative item fails its whole batch
// (as a poison value fails a transaction).
type double struct {
	mu      sync.Mutex
	batches [][]int
	gate    chan struct{} // when set, each batch waits for a receive... or its ctx
}

func (d *double) commit(ctx context.Context, batch []int) ([]Result[int], error) {
	d.mu.Lock()
	d.batches = append(d.batches, slices.Clone(batch))
	gate := d.gate
	d.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	out := make([]Result[int], len(batch))
	for i, v := range batch {
		if v < 0 {
			return nil, fmt.Errorf("poison %d", v)
		}
		out[i] = Result[int]{Val: 2 * v}
	}
	return out, nil
}

func (d *double) seen() [][]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.batches)
}

func TestBatchesConcurrentCalls(t *testing.T) {
	d := &double{gate: make(chan struct{})}
	c := New(d.commit, Options{MaxBatch: 16})
	defer c.Close()

	// The first call holds the committer, so the next 40 queue up behind it
	// and go in batches of at most 16.
	first := make(chan error, 1)
	go func() { _, err := c.Do(context.Background(), 1000); first <- err }()
	waitFor(t, func() bool { return len(d.seen()) == 1 })

	const n = 40
	var wg sync.WaitGroup
	got := make([]int, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { got[i], errs[i] = c.Do(context.Background(), i) })
	}
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.queue) == n })
	close(d.gate)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if errs[i] != nil || got[i] != 2*i {
			t.Fatalf("item %d: %d, %v", i, got[i], errs[i])
		}
	}
	batches := d.seen()
	if len(batches) != 1+3 { // 1, then 16 + 16 + 8
		t.Fatalf("%d batches for 41 items: %v", len(batches), batches)
	}
	for _, b := range batches[1:] {
		if len(b) > 16 {
			t.Fatalf("batch of %d over MaxBatch", len(b))
		}
	}
}

func TestPoisonItemFailsAlone(t *testing.T) {
	d := &double{gate: make(chan struct{})}
	c := New(d.commit, Options{})
	defer c.Close()
	go func() { _, _ = c.Do(context.Background(), 0) }()
	waitFor(t, func() bool { return len(d.seen()) == 1 })

	items := []int{1, 2, -3, 4}
	var wg sync.WaitGroup
	got := make([]int, len(items))
	errs := make([]error, len(items))
	for i, v := range items {
		wg.Go(func() { got[i], errs[i] = c.Do(context.Background(), v) })
	}
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.queue) == len(items) })
	close(d.gate)
	wg.Wait()
	for i, v := range items {
		if v < 0 {
			if errs[i] == nil {
				t.Errorf("poison item %d succeeded", v)
			}
			continue
		}
		if errs[i] != nil || got[i] != 2*v {
			t.Errorf("item %d: %d, %v (one poison item sank it)", v, got[i], errs[i])
		}
	}
}

// A caller whose context ends while it is queued leaves at once, and its item
// never reaches the commit function.
func TestQueuedCallerLeaves(t *testing.T) {
	d := &double{gate: make(chan struct{})}
	c := New(d.commit, Options{})
	defer c.Close()
	held := make(chan error, 1)
	go func() { _, err := c.Do(context.Background(), 1); held <- err }()
	waitFor(t, func() bool { return len(d.seen()) == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	began := time.Now()
	if _, err := c.Do(ctx, 2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued caller: %v", err)
	}
	if took := time.Since(began); took > time.Second {
		t.Fatalf("queued caller took %v to leave", took)
	}
	close(d.gate)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if _, err := c.Do(context.Background(), 3); err != nil {
		t.Fatal(err)
	}
	for _, b := range d.seen() {
		if slices.Contains(b, 2) {
			t.Fatalf("an abandoned item was committed: %v", d.seen())
		}
	}
}

func TestEndedContext(t *testing.T) {
	d := &double{}
	c := New(d.commit, Options{})
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Do(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Do with a canceled context: %v", err)
	}
	if len(d.seen()) != 0 {
		t.Fatal("an item with a canceled context was committed")
	}
}

// A batch whose callers have all given up is abandoned: its context ends.
func TestBatchAbandonedWhenAllLeave(t *testing.T) {
	d := &double{gate: make(chan struct{})} // never opened
	c := New(d.commit, Options{Grace: time.Second})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err := c.Do(ctx, 1)
	if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do: %v", err)
	}
	if errors.Is(err, ErrInFlight) {
		t.Fatalf("the abandoned batch was not canceled: %v", err)
	}
	if took := time.Since(began); took > 900*time.Millisecond {
		t.Fatalf("took %v", took)
	}
}

// A caller whose context ends mid-batch, while another caller still waits on
// that batch, gives up after the grace period with ErrInFlight; the other
// gets the result.
func TestGraceWhileOthersWait(t *testing.T) {
	d := &double{gate: make(chan struct{})}
	c := New(d.commit, Options{Grace: 50 * time.Millisecond})
	defer c.Close()
	go func() { _, _ = c.Do(context.Background(), 0) }()
	waitFor(t, func() bool { return len(d.seen()) == 1 })

	short, cancel := context.WithCancel(context.Background())
	shortErr := make(chan error, 1)
	go func() { _, err := c.Do(short, 1); shortErr <- err }()
	longRes := make(chan int, 1)
	go func() { v, _ := c.Do(context.Background(), 2); longRes <- v }()
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.queue) == 2 })
	d.gate <- struct{}{} // the first batch ends; the two are taken together
	waitFor(t, func() bool { return len(d.seen()) == 2 })
	cancel()
	if err := <-shortErr; !errors.Is(err, context.Canceled) || !errors.Is(err, ErrInFlight) {
		t.Fatalf("caller that left mid-batch: %v", err)
	}
	close(d.gate)
	if v := <-longRes; v != 4 {
		t.Fatalf("the other caller got %d", v)
	}
}

func TestCloseDrainsThenRefuses(t *testing.T) {
	var n atomic.Int32
	c := New(func(ctx context.Context, b []int) ([]Result[int], error) {
		n.Add(int32(len(b)))
		return make([]Result[int], len(b)), nil
	}, Options{})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if _, err := c.Do(context.Background(), i); err != nil && !errors.Is(err, ErrClosed) {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	c.Close()
	c.Close()
	if _, err := c.Do(context.Background(), 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Do after Close: %v", err)
	}
	if n.Load() != 20 {
		t.Fatalf("%d of 20 committed", n.Load())
	}
}

func TestPanicReachesCaller(t *testing.T) {
	c := New(func(ctx context.Context, b []int) ([]Result[int], error) { panic("boom") }, Options{})
	defer c.Close()
	defer func() {
		if v := recover(); v != "boom" {
			t.Fatalf("recovered %v", v)
		}
	}()
	_, _ = c.Do(context.Background(), 1)
	t.Fatal("Do returned")
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// An idle committer runs no goroutine, so one never closed leaks nothing.
func TestIdleRunsNothing(t *testing.T) {
	d := &double{}
	c := New(d.commit, Options{})
	if _, err := c.Do(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.running == 0 })
	if v, err := c.Do(context.Background(), 2); err != nil || v != 4 {
		t.Fatalf("Do after the loop ended: %d, %v", v, err)
	}
}

// With Concurrent 2, a second item commits while the first batch is still
// in flight instead of waiting behind it; a third waits for one of them.
func TestConcurrentBatches(t *testing.T) {
	var inFlight, most atomic.Int32
	release := make(chan struct{})
	c := New(func(ctx context.Context, b []int) ([]Result[int], error) {
		n := inFlight.Add(1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-release
		inFlight.Add(-1)
		return make([]Result[int], len(b)), nil
	}, Options{Concurrent: 2})
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			if _, err := c.Do(context.Background(), i); err != nil {
				t.Error(err)
			}
		})
		if i < 2 {
			waitFor(t, func() bool { return inFlight.Load() == int32(i+1) })
		}
	}
	time.Sleep(50 * time.Millisecond) // a third batch would have started by now
	if m := most.Load(); m != 2 {
		t.Fatalf("%d batches at once, want 2", m)
	}
	close(release)
	wg.Wait()
	c.Close()
}

// Observe is told of every transaction: the batch of four with a poison
// item, then each of its items alone, with their sizes and errors.
func TestObserveSeesEveryTransaction(t *testing.T) {
	d := &double{gate: make(chan struct{})}
	type obs struct {
		items  int
		failed bool
	}
	var mu sync.Mutex
	var seen []obs
	c := New(d.commit, Options{Observe: func(items int, took time.Duration, err error) {
		if took < 0 {
			t.Errorf("negative duration %s", took)
		}
		mu.Lock()
		seen = append(seen, obs{items, err != nil})
		mu.Unlock()
	}})
	defer c.Close()
	go func() { _, _ = c.Do(context.Background(), 0) }()
	waitFor(t, func() bool { return len(d.seen()) == 1 })
	var wg sync.WaitGroup
	for _, v := range []int{1, 2, -3, 4} {
		wg.Go(func() { _, _ = c.Do(context.Background(), v) })
	}
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.queue) == 4 })
	close(d.gate)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	// The four alone come in queue order, which the goroutines chose.
	if len(seen) == 6 {
		slices.SortFunc(seen[2:], func(a, b obs) int {
			if a.failed == b.failed {
				return 0
			}
			if a.failed {
				return 1
			}
			return -1
		})
	}
	want := []obs{{1, false}, {4, true}, {1, false}, {1, false}, {1, false}, {1, true}}
	if !slices.Equal(seen, want) {
		t.Errorf("observed %v, want %v", seen, want)
	}
}
