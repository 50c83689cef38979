// Package memlock is the in-process consent.Locker: one lock per key, held
// inside a single ConsentLine instance. It is the right choice when one
// instance serves all webhooks; with several instances use consent/redislock,
// since this lock cannot see the other processes.
package memlock

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/consentline/consentline/consent"
)

// ErrReleased is the cause of a held context canceled because its owner
// called release (see context.Cause).
var ErrReleased = errors.New("memlock: lock released")

// Locker serializes work per key within this process. The zero value is not
// usable; call New.
type Locker struct {
	mu sync.Mutex
	// locks holds an entry only while some goroutine holds or waits for its
	// key; the last one out deletes it, so the map's size is bounded by the
	// number of keys in use, not the number of calls ever seen.
	locks map[string]*entry
}

// entry is one key's lock. sem is a one-slot semaphore: sending takes the
// lock, receiving frees it. A channel rather than a sync.Mutex because a
// waiter must be able to give up when its ctx ends, and select lets it wait
// for either in its own goroutine, with no helper goroutine per waiter.
type entry struct {
	sem chan struct{}
	// refs counts holders plus waiters; guarded by Locker.mu.
	refs int
}

// New returns an empty Locker.
func New() *Locker {
	return &Locker{locks: make(map[string]*entry)}
}

var _ consent.Locker = (*Locker)(nil)

// Acquire blocks until it holds key or ctx ends. On ctx end it returns an
// error wrapping both consent.ErrLockTimeout and ctx's cause. held is derived
// from ctx and canceled (cause ErrReleased) by release; an in-process lock
// cannot otherwise be lost. release is idempotent: only its first call frees
// the lock, so a stray second call cannot free a later owner's lock.
func (l *Locker) Acquire(ctx context.Context, key string) (held context.Context, release func(), err error) {
	return l.acquire(ctx, key, true)
}

// TryAcquire takes key if nobody holds it, else returns an error wrapping
// consent.ErrLockBusy at once.
func (l *Locker) TryAcquire(ctx context.Context, key string) (held context.Context, release func(), err error) {
	return l.acquire(ctx, key, false)
}

// Wait blocks until nobody holds key or ctx ends. It queues like a waiter
// and hands the lock straight back, so it returns only after every holder
// before it has released.
func (l *Locker) Wait(ctx context.Context, key string) error {
	if ctx.Err() != nil {
		return timeoutErr(ctx, key)
	}
	e := l.ref(key)
	defer l.unref(key, e)
	select {
	case e.sem <- struct{}{}:
		<-e.sem
		return nil
	case <-ctx.Done():
		return timeoutErr(ctx, key)
	}
}

func (l *Locker) acquire(ctx context.Context, key string, wait bool) (held context.Context, release func(), err error) {
	// Fail before queueing when ctx is already over: select below chooses at
	// random between ready cases, and a dead request should not take the lock.
	if ctx.Err() != nil {
		return nil, nil, timeoutErr(ctx, key)
	}
	e := l.ref(key)
	if wait {
		select {
		case e.sem <- struct{}{}:
		case <-ctx.Done():
			l.unref(key, e)
			return nil, nil, timeoutErr(ctx, key)
		}
	} else {
		select {
		case e.sem <- struct{}{}:
		default:
			l.unref(key, e)
			return nil, nil, fmt.Errorf("memlock: %q: %w", key, consent.ErrLockBusy)
		}
	}

	held, cancel := context.WithCancelCause(ctx)
	var once sync.Once
	release = func() {
		once.Do(func() {
			// Cancel first so work under held stops before the next owner
			// can start.
			cancel(ErrReleased)
			<-e.sem
			l.unref(key, e)
		})
	}
	return held, release, nil
}

// ref finds or creates key's entry and counts the caller in.
func (l *Locker) ref(key string) *entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.locks[key]
	if e == nil {
		e = entryPool.Get().(*entry)
		l.locks[key] = e
	}
	e.refs++
	return e
}

// unref drops one holder or waiter of e and removes e once nobody uses it.
// A goroutine that looked e up earlier still has refs counted, so it can
// never be left holding a removed entry while another goroutine creates a
// fresh one for the same key.
func (l *Locker) unref(key string, e *entry) {
	l.mu.Lock()
	e.refs--
	if e.refs == 0 {
		delete(l.locks, key)
		l.mu.Unlock()
		// Nobody holds or waits for e and nobody can find it any more, so
		// its semaphore is empty and it can serve another key. Reuse halves
		// the allocations of the common uncontended call.
		entryPool.Put(e)
		return
	}
	l.mu.Unlock()
}

var entryPool = sync.Pool{New: func() any { return &entry{sem: make(chan struct{}, 1)} }}

func timeoutErr(ctx context.Context, key string) error {
	return fmt.Errorf("memlock: %q: %w: %w", key, consent.ErrLockTimeout, context.Cause(ctx))
}
