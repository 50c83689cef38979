package memlock

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
)

func (l *Locker) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.locks)
}

func TestMutualExclusion(t *testing.T) {
	l := New()
	// A plain int: if two goroutines ever held the lock together, -race
	// reports it and the final count comes up short.
	counter := 0
	var inside atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, release, err := l.Acquire(ctx, "call-1")
			if err != nil {
				t.Error(err)
				return
			}
			defer release()
			if n := inside.Add(1); n != 1 {
				t.Errorf("%d holders at once", n)
			}
			v := counter
			time.Sleep(100 * time.Microsecond)
			counter = v + 1
			inside.Add(-1)
		})
	}
	wg.Wait()
	if counter != 50 {
		t.Fatalf("counter = %d, want 50 (lost updates)", counter)
	}
	if n := l.size(); n != 0 {
		t.Fatalf("%d entries left in the map", n)
	}
}

func TestTimeout(t *testing.T) {
	l := New()
	_, release, err := l.Acquire(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	defer release()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err = l.Acquire(ctx, "k")
	if !errors.Is(err, consent.ErrLockTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrLockTimeout and DeadlineExceeded", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond || d > time.Second {
		t.Fatalf("gave up after %v, want about 50ms", d)
	}

	// A canceled ctx fails at once even though it is the lock's only
	// contender after release.
	release()
	dead, cancelDead := context.WithCancel(context.Background())
	cancelDead()
	if _, _, err := l.Acquire(dead, "k"); !errors.Is(err, consent.ErrLockTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want ErrLockTimeout and Canceled", err)
	}
	if n := l.size(); n != 0 {
		t.Fatalf("%d entries left after timed-out waiters", n)
	}
}

func TestReleaseCancelsHeldAndIsIdempotent(t *testing.T) {
	l := New()
	held, release, err := l.Acquire(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	if held.Err() != nil {
		t.Fatal("held canceled while held")
	}
	release()
	if !errors.Is(context.Cause(held), ErrReleased) {
		t.Fatalf("cause = %v, want ErrReleased", context.Cause(held))
	}

	// The second owner's lock must survive the first owner's stray release.
	held2, release2, err := l.Acquire(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	defer release2()
	release()
	if held2.Err() != nil {
		t.Fatal("stray release canceled the next owner")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, _, err := l.Acquire(ctx, "k"); !errors.Is(err, consent.ErrLockTimeout) {
		t.Fatalf("stray release freed the next owner's lock: err = %v", err)
	}
}

func TestHeldFollowsParent(t *testing.T) {
	l := New()
	parent, cancel := context.WithCancel(context.Background())
	held, release, err := l.Acquire(parent, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	cancel()
	if !errors.Is(held.Err(), context.Canceled) {
		t.Fatal("held not canceled with its parent")
	}
}

func TestKeysAreIndependent(t *testing.T) {
	l := New()
	_, release, err := l.Acquire(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, releaseB, err := l.Acquire(ctx, "b")
	if err != nil {
		t.Fatalf("key b blocked by key a: %v", err)
	}
	releaseB()
}

func TestMapDoesNotGrow(t *testing.T) {
	l := New()
	ctx := context.Background()
	for i := range 10_000 {
		_, release, err := l.Acquire(ctx, "call-"+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		release()
	}
	if n := l.size(); n != 0 {
		t.Fatalf("%d entries left after 10,000 keys", n)
	}
}

func TestWaiterHandOff(t *testing.T) {
	// Waiters queued on a key keep the entry alive while the holder
	// releases, and each gets the lock in turn.
	l := New()
	_, release, err := l.Acquire(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	var got atomic.Int32
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, r, err := l.Acquire(ctx, "k")
			if err != nil {
				t.Error(err)
				return
			}
			got.Add(1)
			r()
		})
	}
	time.Sleep(10 * time.Millisecond)
	release()
	wg.Wait()
	if got.Load() != 10 {
		t.Fatalf("%d of 10 waiters got the lock", got.Load())
	}
	if n := l.size(); n != 0 {
		t.Fatalf("%d entries left", n)
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	l := New()
	ctx := context.Background()
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		// One key per goroutine: uncontended, and the entry is created and
		// deleted on every iteration, which is the common webhook case.
		key := "call-" + strconv.FormatInt(next.Add(1), 10)
		for pb.Next() {
			_, release, err := l.Acquire(ctx, key)
			if err != nil {
				b.Fatal(err)
			}
			release()
		}
	})
}

func TestTryAcquireAndWait(t *testing.T) {
	l := New()
	ctx := context.Background()
	_, release, err := l.TryAcquire(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.TryAcquire(ctx, "k"); !errors.Is(err, consent.ErrLockBusy) {
		t.Fatalf("second TryAcquire: %v, want ErrLockBusy", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- l.Wait(ctx, "k") }()
	select {
	case err := <-waited:
		t.Fatalf("Wait returned while held: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	release()
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	// Wait does not take the lock.
	_, release, err = l.TryAcquire(ctx, "k")
	if err != nil {
		t.Fatalf("after Wait: %v", err)
	}
	release()
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	_, release, _ = l.TryAcquire(ctx, "k")
	defer release()
	if err := l.Wait(short, "k"); !errors.Is(err, consent.ErrLockTimeout) {
		t.Fatalf("Wait past ctx: %v", err)
	}
	if n := len(l.locks); n != 1 {
		t.Fatalf("%d entries left, want 1 (the held key)", n)
	}
}
