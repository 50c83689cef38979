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
	// RetryInterval is the mean wait between attempts to take a busy lock;
	// each wait is jittered uniformly over [½, 1½)× so that instances that
	// lost the same race do not retry in lockstep. Default 10ms.
	RetryInterval time.Duration
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
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Locker{client: client, opts: opts, ttlMS: opts.TTL.Milliseconds()}
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

	// KEYS[1] lock key, ARGV[1] owner token.
	// Returns 1 if deleted, 0 if the key is gone or not ours.
	releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0`)
)

// Acquire takes the lock named key (stored at Prefix+key), retrying every
// ~RetryInterval while another owner holds it, until ctx ends; then it
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
	rkey := l.opts.Prefix + key
	token := newToken()

	var wait *time.Timer
	for {
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, l.opts.CommandTimeout)
		got, err := acquireScript.Run(cctx, l.client, []string{rkey}, token, l.ttlMS).Int()
		cancel()
		if err == nil && got == 1 {
			if wait != nil {
				wait.Stop()
			}
			return l.hold(ctx, key, rkey, token, start)
		}
		if err != nil {
			if wait != nil {
				wait.Stop()
			}
			if isTimeout(err) {
				// We stopped waiting for the answer, but the SET may
				// still have landed: free it if it did, so this call's
				// retry does not wait out a TTL. Off the caller's
				// already spent budget.
				go l.del(context.WithoutCancel(ctx), key, rkey, token)
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

		d := jitter(l.opts.RetryInterval)
		if wait == nil {
			wait = time.NewTimer(d)
		} else {
			wait.Reset(d)
		}
		select {
		case <-ctx.Done():
			wait.Stop()
			return nil, nil, timeoutErr(ctx, key, nil)
		case <-wait.C:
		}
	}
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
		go l.delRetry(ctx, key, rkey, token, time.Now().Add(l.opts.TTL))
		return
	}
	if err != nil {
		l.opts.Logger.Warn("redislock: releasing lock failed; it lapses after its TTL", "key", key, "ttl", l.opts.TTL, "err", err)
	}
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
	return releaseScript.Run(ctx, l.client, []string{rkey}, token).Err()
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
