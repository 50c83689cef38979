// Package redislock is the consent.Locker shared by every ConsentLine
// instance: a per-key lease in Redis, so that when Twilio delivers the same
// webhook to several instances at once only one of them decides.
//
// A lock is a Redis string key = Prefix+key whose value is a random 128-bit
// owner token, set with SET NX PX ttl. While held, it is extended at TTL/3
// by a compare-and-extend script, and released by a compare-and-delete
// script, so an owner only ever touches a key that still holds its token.
//
// A lease can be lost: Redis unreachable for longer than the TTL, or the key
// evicted, overwritten, or dropped by a failover to a replica that had not
// seen the SET. The holder then cancels the held context with a cause
// wrapping ErrLockLost so work under it stops instead of committing. When it
// cannot extend, it does so shortly before its own conservative estimate of
// the expiry, i.e. before Redis could let another owner in; a key that
// vanished some other way is noticed at the next extension, up to TTL/3
// later. No lease can fence off a process paused for longer than that, so
// the store's unique constraint on (CallSID, Script.ID) stays the last guard
// of exactly-once.
package redislock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/consentline/consentline/consent"
)

var (
	// ErrLockLost is the cause (see context.Cause) of a held context
	// canceled because this owner no longer holds the lock: the key was gone
	// or held another owner's token when it was to be extended, or Redis
	// could not be reached to extend it before its TTL lapsed.
	ErrLockLost = errors.New("redislock: lock lost")
	// ErrReleased is the cause of a held context canceled by its release.
	ErrReleased = errors.New("redislock: lock released")
)

// Defaults for the zero fields of Options.
const (
	DefaultTTL            = 10 * time.Second
	DefaultRetryInterval  = 10 * time.Millisecond
	DefaultCommandTimeout = 500 * time.Millisecond
)

// Options configures a Locker. Zero fields take the defaults above.
type Options struct {
	// Prefix is prepended to every key, e.g. "consentline:lock:", to keep
	// the locks apart from other data in the same Redis.
	Prefix string
	// TTL is the lease: how long a lock outlives a holder that died without
	// releasing it. It must be comfortably longer than a decision takes and
	// than a Redis hiccup, since a holder that cannot extend in time gives
	// the lock up. Default 10s. Truncated to milliseconds.
	TTL time.Duration
	// RetryInterval is the mean wait between attempts to take a busy lock
	// until the Locker's release subscription is up; each wait is jittered
	// uniformly over [½, 1½)× so that instances that lost the same race do
	// not retry in lockstep. Default 10ms. Once subscribed, a waiter is woken
	// by the holder's release and polls only every WakeupPoll, for a
	// release it could not hear (a holder that died and let its lease
	// lapse, a message lost while the subscription reconnected).
	RetryInterval time.Duration
	// WakeupPoll is a subscribed waiter's fallback poll. Default 100ms.
	WakeupPoll time.Duration
	// CommandTimeout bounds each Redis round trip the Locker makes, on top
	// of any ctx deadline: a SET attempt, an extension, release's delete.
	// A healthy Redis answers in about a millisecond; this turns an
	// unreachable or stalled one into a prompt error instead of letting the
	// client's own dial retries and back-off (well over a second with
	// go-redis defaults) eat the webhook's budget. Default 500ms.
	CommandTimeout time.Duration
	// Logger receives failures that have no caller to return to: a release
	// that could not delete its key and transient extension errors.
	// Default slog.Default().
	Logger *slog.Logger
}

// Locker takes per-key locks in Redis. It is safe for concurrent use; create
// one per process and share it.
type Locker struct {
	client redis.UniversalClient
	opts   Options
	ttlMS  int64
	// releasedChannel is where release announces a freed key (its Redis
	// key, Prefix included), so waiters on every instance
	// try again at once instead of polling Redis every few milliseconds:
	// under a burst, hundreds of waiters polling at 10 ms is most of what
	// Redis and the client pool do.
	releasedChannel string

	mu sync.Mutex
	// waiters maps a Redis key to the channels of the Acquires waiting for
	// it on this instance; each is closed by the release message.
	waiters map[string]map[chan struct{}]struct{}
	// cleanup bounds the background deletes of locks whose release or
	// acquisition timed out: under overload each one is another connection
	// and command, so past maxCleanup the lease is left to lapse (TTL)
	// instead of adding to the load that made them time out.
	cleanup    chan struct{}
	subscribe  sync.Once
	subscribed atomic.Bool
	pubsub     *redis.PubSub
	closed     bool
	subDone    chan struct{}
}

var _ consent.Locker = (*Locker)(nil)

// New returns a Locker using client. For the webhook's time budget to hold,
// client should be built with ContextTimeoutEnabled so that go-redis stops
// waiting on a slow Redis when ctx ends rather than after its ReadTimeout.
func New(client redis.UniversalClient, opts Options) *Locker {
	if opts.TTL <= 0 {
		opts.TTL = DefaultTTL
	}
	opts.TTL = max(opts.TTL.Truncate(time.Millisecond), time.Millisecond)
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = DefaultRetryInterval
	}
	if opts.CommandTimeout <= 0 {
		opts.CommandTimeout = DefaultCommandTimeout
	}
	if opts.WakeupPoll <= 0 {
		opts.WakeupPoll = 100 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Locker{client: client, opts: opts, ttlMS: opts.TTL.Milliseconds(),
		releasedChannel: opts.Prefix + "released", waiters: map[string]map[chan struct{}]struct{}{},
		cleanup: make(chan struct{}, maxCleanup)}
}

// Close stops the release subscription. Locks held stay held until
// released; Acquire keeps working, by polling.
func (l *Locker) Close() error {
	l.mu.Lock()
	l.closed = true
	ps, done := l.pubsub, l.subDone
	l.mu.Unlock()
	if ps == nil {
		return nil
	}
	err := ps.Close()
	<-done
	return err
}

// listen starts, once, the subscription to release messages. Until it is
// confirmed, waiters poll at RetryInterval.
func (l *Locker) listen() {
	l.subscribe.Do(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.closed {
			return
		}
		// Subscribe sends nothing until used; Channel starts go-redis's
		// reader, which reconnects and resubscribes on its own.
		l.pubsub = l.client.Subscribe(context.Background())
		l.subDone = make(chan struct{})
		go l.receive(l.pubsub, l.subDone)
	})
}

func (l *Locker) receive(ps *redis.PubSub, done chan struct{}) {
	defer close(done)
	ctx, cancel := context.WithTimeout(context.Background(), l.opts.CommandTimeout)
	err := ps.Subscribe(ctx, l.releasedChannel)
	if err == nil {
		_, err = ps.ReceiveTimeout(ctx, l.opts.CommandTimeout)
	}
	cancel()
	if err != nil {
		// Polling still works; a later Locker (or restart) tries again.
		l.opts.Logger.Warn("redislock: release subscription failed; waiters poll", "err", err)
		return
	}
	l.subscribed.Store(true)
	defer l.subscribed.Store(false)
	for msg := range ps.Channel() {
		l.wake(msg.Payload)
	}
}

// watch registers a waiter for rkey's release; call it before trying the
// lock, so a release between the try and the wait is not missed.
func (l *Locker) watch(rkey string) chan struct{} {
	ch := make(chan struct{})
	l.mu.Lock()
	w := l.waiters[rkey]
	if w == nil {
		w = map[chan struct{}]struct{}{}
		l.waiters[rkey] = w
	}
	w[ch] = struct{}{}
	l.mu.Unlock()
	return ch
}

func (l *Locker) unwatch(rkey string, ch chan struct{}) {
	l.mu.Lock()
	if w := l.waiters[rkey]; w != nil {
		delete(w, ch)
		if len(w) == 0 {
			delete(l.waiters, rkey)
		}
	}
	l.mu.Unlock()
}

func (l *Locker) wake(rkey string) {
	l.mu.Lock()
	w := l.waiters[rkey]
	delete(l.waiters, rkey)
	l.mu.Unlock()
	for ch := range w {
		close(ch)
	}
}

// Both scripts compare the owner token and act in one atomic step: a GET
// followed by a separate PEXPIRE or DEL could act on a key that expired and
// was taken by another owner in between.
var (
	// KEYS[1] lock key, ARGV[1] owner token, ARGV[2] TTL in ms.
	// Returns 1 if extended, 0 if the key is gone or not ours.
	extendScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0`)

	// KEYS[1] lock key, ARGV[1] owner token, ARGV[2] TTL in ms.
	// Returns 1 if the lock is now ours, 0 if another owner holds it.
	// Idempotent for one token: when a reply is lost and the command is
	// sent again (by go-redis's retry or by Acquire's loop), the key
	// already holding our token means we hold the lock, not that someone
	// else does — a plain SET NX would wait out its own TTL.
	acquireScript = redis.NewScript(`
local v = redis.call("GET", KEYS[1])
if v == false then
	redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
	return 1
end
if v == ARGV[1] then
	redis.call("PEXPIRE", KEYS[1], ARGV[2])
	return 1
end
return 0`)

	// KEYS[1] lock key, ARGV[1] owner token, ARGV[2] the release channel.
	// Returns 1 if deleted (and announced), 0 if the key is gone or not ours.
	releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	redis.call("DEL", KEYS[1])
	redis.call("PUBLISH", ARGV[2], KEYS[1])
	return 1
end
return 0`)
)

// Acquire takes the lock named key (stored at Prefix+key), trying again
// whenever its holder releases it (see Wait) until ctx ends; then it
// returns an error wrapping consent.ErrLockTimeout and ctx's cause. Any other
// Redis error (refused connection, auth, no answer within CommandTimeout,
// ...) is returned at once, wrapped, since retrying it would only use up the
// caller's deadline.
//
// held is derived from ctx. It is canceled with cause ErrReleased by release,
// or with a cause wrapping ErrLockLost if the lock is lost while held; check
// held.Err() / context.Cause(held) before committing. Once held is done for
// any reason, including ctx ending, the lock is no longer extended, so a
// holder that never calls release blocks the key for at most TTL.
//
// release cancels held, then deletes the key if it still holds this owner's
// token. It is idempotent and safe to call from any goroutine.
func (l *Locker) Acquire(ctx context.Context, key string) (held context.Context, release func(), err error) {
	if ctx.Err() != nil {
		return nil, nil, timeoutErr(ctx, key, nil)
	}
	token := newToken()
	for {
		// Watch before trying: a release landing between a failed try and
		// the wait still wakes us.
		woken := l.watch(l.opts.Prefix + key)
		held, release, err := l.try(ctx, key, token)
		if !errors.Is(err, consent.ErrLockBusy) {
			l.unwatch(l.opts.Prefix+key, woken)
			return held, release, err
		}
		if err := l.await(ctx, key, woken); err != nil {
			return nil, nil, err
		}
	}
}

// TryAcquire takes key if it is free, else returns an error wrapping
// consent.ErrLockBusy after one round trip. Other errors are Acquire's.
func (l *Locker) TryAcquire(ctx context.Context, key string) (held context.Context, release func(), err error) {
	if ctx.Err() != nil {
		return nil, nil, timeoutErr(ctx, key, nil)
	}
	return l.try(ctx, key, newToken())
}

// Wait blocks until key is free in Redis (released, or its lease lapsed)
// or ctx ends, woken by the holder's release message and checking every
// WakeupPoll (RetryInterval until the subscription is up) for a release it
// could not hear.
func (l *Locker) Wait(ctx context.Context, key string) error {
	rkey := l.opts.Prefix + key
	for {
		if ctx.Err() != nil {
			return timeoutErr(ctx, key, nil)
		}
		woken := l.watch(rkey)
		cctx, cancel := context.WithTimeout(ctx, l.opts.CommandTimeout)
		n, err := l.client.Exists(cctx, rkey).Result()
		cancel()
		if err != nil {
			l.unwatch(rkey, woken)
			if ctx.Err() != nil {
				return timeoutErr(ctx, key, err)
			}
			return fmt.Errorf("redislock: wait %q: %w", key, err)
		}
		if n == 0 {
			l.unwatch(rkey, woken)
			return nil
		}
		if err := l.await(ctx, key, woken); err != nil {
			return err
		}
	}
}

// await waits for woken (the key's release message), a fallback poll
// interval, or ctx's end; it unwatches the key whichever comes first.
func (l *Locker) await(ctx context.Context, key string, woken chan struct{}) error {
	l.listen()
	d := jitter(l.opts.RetryInterval)
	if l.subscribed.Load() {
		d = jitter(l.opts.WakeupPoll)
	}
	poll := time.NewTimer(d)
	defer poll.Stop()
	defer l.unwatch(l.opts.Prefix+key, woken)
	select {
	case <-ctx.Done():
		return timeoutErr(ctx, key, nil)
	case <-woken:
	case <-poll.C:
	}
	return nil
}

// try makes one attempt to take key for token.
func (l *Locker) try(ctx context.Context, key, token string) (context.Context, func(), error) {
	rkey := l.opts.Prefix + key
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, l.opts.CommandTimeout)
	got, err := acquireScript.Run(cctx, l.client, []string{rkey}, token, l.ttlMS).Int()
	cancel()
	switch {
	case err == nil && got == 1:
		return l.hold(ctx, key, rkey, token, start)
	case err == nil:
		return nil, nil, fmt.Errorf("redislock: %q: %w", key, consent.ErrLockBusy)
	}
	if isTimeout(err) {
		// We stopped waiting for the answer, but the SET may still have
		// landed: free it if it did, so this call's retry does not wait
		// out a TTL. Off the caller's already spent budget.
		l.inBackground(func() { l.del(context.WithoutCancel(ctx), key, rkey, token) })
	}
	if ctx.Err() != nil {
		return nil, nil, timeoutErr(ctx, key, err)
	}
	if isTimeout(err) {
		// Not the caller's deadline: keep errors.Is(err,
		// context.DeadlineExceeded) meaning theirs only.
		return nil, nil, fmt.Errorf("redislock: acquire %q: Redis unreachable or not answering within %v: %v", key, l.opts.CommandTimeout, err)
	}
	return nil, nil, fmt.Errorf("redislock: acquire %q: %w", key, err)
}

// holder is one acquisition of a lock.
type holder struct {
	l                *Locker
	parent           context.Context
	key, rkey, token string
	held             context.Context
	cancel           context.CancelCauseFunc

	mu       sync.Mutex
	released bool
	// validUntil is a conservative local estimate of when Redis will expire
	// the key: TTL after the last successful SET or extension was sent
	// (Redis starts its clock later, when the command arrives).
	validUntil time.Time
	// extendTimer runs extend at TTL/3. A timer rather than a goroutine
	// sleeping in a loop: most decisions finish well within TTL/3, so most
	// locks never start a goroutine at all.
	extendTimer *time.Timer
	// lapseTimer cancels held when validUntil (less a margin) passes without
	// a successful extension. It is separate from extend so that it fires
	// on time even while an extension is stuck waiting on Redis. Armed by
	// the first extension.
	lapseTimer *time.Timer
	lastErr    error
}

func (l *Locker) hold(parent context.Context, key, rkey, token string, start time.Time) (context.Context, func(), error) {
	h := &holder{l: l, parent: parent, key: key, rkey: rkey, token: token, validUntil: start.Add(l.opts.TTL)}
	h.held, h.cancel = context.WithCancelCause(parent)
	h.mu.Lock()
	h.extendTimer = time.AfterFunc(l.opts.TTL/3, h.extend)
	h.mu.Unlock()
	return h.held, h.release, nil
}

// margin is how long before the estimated expiry a holder that could not
// extend gives up: slack for clock-rate differences between us and Redis and
// for the canceled work to notice before another owner can start.
func (h *holder) margin() time.Duration { return h.l.opts.TTL / 10 }

// lapseAt is when a holder that has not extended gives up; h.mu held.
func (h *holder) lapseAt() time.Time { return h.validUntil.Add(-h.margin()) }

func (h *holder) extend() {
	if h.held.Err() != nil {
		// Released, lost, or the caller's ctx ended: nothing runs under
		// this lock any more, so let the TTL reclaim it.
		return
	}
	h.mu.Lock()
	if h.released {
		h.mu.Unlock()
		return
	}
	deadline := h.lapseAt()
	if h.lapseTimer == nil {
		h.lapseTimer = time.AfterFunc(time.Until(deadline), h.lapsed)
	}
	h.mu.Unlock()

	start := time.Now()
	// No point in an answer that arrives after we would have given up; and
	// if held ends meanwhile the answer no longer matters.
	if d := start.Add(h.l.opts.CommandTimeout); d.Before(deadline) {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(h.held, deadline)
	n, err := extendScript.Run(ctx, h.l.client, []string{h.rkey}, h.token, h.l.ttlMS).Int64()
	cancel()

	switch {
	case err == nil && n == 1:
		h.mu.Lock()
		if !h.released && h.held.Err() == nil {
			h.validUntil = start.Add(h.l.opts.TTL)
			h.lastErr = nil
			h.lapseTimer.Reset(time.Until(h.lapseAt()))
			h.extendTimer.Reset(h.l.opts.TTL / 3)
		}
		h.mu.Unlock()
	case err == nil:
		h.cancel(fmt.Errorf("%w: %q expired or was taken by another owner", ErrLockLost, h.key))
	default:
		if h.held.Err() != nil {
			return
		}
		// Transient, we hope: try again soon; lapsed gives up if it never
		// succeeds in time.
		h.l.opts.Logger.Warn("redislock: extending lock failed; retrying", "key", h.key, "err", err)
		h.mu.Lock()
		h.lastErr = err
		if !h.released {
			h.extendTimer.Reset(max(h.l.opts.TTL/10, time.Millisecond))
		}
		h.mu.Unlock()
	}
}

func (h *holder) lapsed() {
	h.mu.Lock()
	err := h.lastErr
	h.mu.Unlock()
	if err == nil {
		err = errors.New("no answer from Redis")
	}
	h.cancel(fmt.Errorf("%w: %q could not be extended before its TTL lapsed: %w", ErrLockLost, h.key, err))
}

func (h *holder) release() {
	h.mu.Lock()
	if h.released {
		h.mu.Unlock()
		return
	}
	h.released = true
	h.extendTimer.Stop()
	if h.lapseTimer != nil {
		h.lapseTimer.Stop()
	}
	h.mu.Unlock()

	// Cancel before deleting, so work under held is told to stop before
	// another owner can take the lock.
	h.cancel(ErrReleased)
	h.l.del(context.WithoutCancel(h.parent), h.key, h.rkey, h.token)
}

// del deletes rkey if it still holds token. ctx carries the caller's values
// (tracing) but not its cancellation: a request that is ending must still
// free its lock, or every retry of this call waits out the TTL.
//
// A timed-out delete is tried again in the background while the lock could
// still be alive (within TTL): after a stall the first tries fail, and a
// lock left behind would keep every retry of the call on hold until it
// lapses.
func (l *Locker) del(ctx context.Context, key, rkey, token string) {
	err := l.delOnce(ctx, rkey, token)
	if err != nil && isTimeout(err) {
		if l.inBackground(func() { l.delRetry(ctx, key, rkey, token, time.Now().Add(l.opts.TTL)) }) {
			return
		}
	}
	if err != nil {
		l.opts.Logger.Warn("redislock: releasing lock failed; it lapses after its TTL", "key", key, "ttl", l.opts.TTL, "err", err)
	}
}

// maxCleanup bounds the background deletes in flight per Locker.
const maxCleanup = 16

// inBackground runs f in a goroutine unless maxCleanup are running already;
// it reports whether it did.
func (l *Locker) inBackground(f func()) bool {
	select {
	case l.cleanup <- struct{}{}:
	default:
		return false
	}
	go func() {
		defer func() { <-l.cleanup }()
		f()
	}()
	return true
}

func (l *Locker) delRetry(ctx context.Context, key, rkey, token string, until time.Time) {
	for {
		time.Sleep(jitter(l.opts.RetryInterval * 10))
		err := l.delOnce(ctx, rkey, token)
		if err == nil {
			return
		}
		if !isTimeout(err) || time.Now().Add(l.opts.CommandTimeout).After(until) {
			l.opts.Logger.Warn("redislock: releasing lock failed; it lapses after its TTL", "key", key, "ttl", l.opts.TTL, "err", err)
			return
		}
	}
}

func (l *Locker) delOnce(ctx context.Context, rkey, token string) error {
	ctx, cancel := context.WithTimeout(ctx, l.opts.CommandTimeout)
	defer cancel()
	return releaseScript.Run(ctx, l.client, []string{rkey}, token, l.releasedChannel).Err()
}

// isTimeout reports whether err means we gave up waiting for Redis (so a
// command may or may not have been applied), as opposed to Redis refusing it.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// newToken returns a random 128-bit owner token. It is what makes extend and
// release safe: only the acquisition that set it can match it.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	return hex.EncodeToString(b[:])
}

// jitter returns d scaled uniformly over [½, 1½).
func jitter(d time.Duration) time.Duration {
	return d/2 + mathrand.N(d)
}

func timeoutErr(ctx context.Context, key string, err error) error {
	if err != nil {
		return fmt.Errorf("redislock: %q: %w: %w (last error: %w)", key, consent.ErrLockTimeout, context.Cause(ctx), err)
	}
	return fmt.Errorf("redislock: %q: %w: %w", key, consent.ErrLockTimeout, context.Cause(ctx))
}
