package redislock

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/testdb"
)

// env is one test's Redis: the parsed options (so tests can build extra
// clients, as separate instances would) and a key prefix of its own.
type env struct {
	t      *testing.T
	opt    *redis.Options
	prefix string
	admin  *redis.Client // for inspecting and tampering with keys
}

func newEnv(t *testing.T) *env {
	t.Helper()
	url, prefix := testdb.Redis(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, opt: opt, prefix: prefix}
	e.admin = e.client()
	return e
}

// client returns a new client, as another instance would have. Context
// timeouts enabled, as recommended for production use.
func (e *env) client() *redis.Client {
	o := *e.opt
	o.ContextTimeoutEnabled = true
	c := redis.NewClient(&o)
	e.t.Cleanup(func() { c.Close() })
	return c
}

// locker returns a Locker on its own client under the test's prefix.
func (e *env) locker(opts Options) *Locker {
	opts.Prefix = e.prefix
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return New(e.client(), opts)
}

func mustAcquire(t *testing.T, l *Locker, ctx context.Context, key string) (context.Context, func()) {
	t.Helper()
	held, release, err := l.Acquire(ctx, key)
	if err != nil {
		t.Fatalf("Acquire(%q): %v", key, err)
	}
	t.Cleanup(release)
	return held, release
}

// assertBusy checks that key cannot be taken within a short wait.
func assertBusy(t *testing.T, l *Locker, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, release, err := l.Acquire(ctx, key)
	if err == nil {
		release()
		t.Fatalf("%q was free, want it held", key)
	}
	if !errors.Is(err, consent.ErrLockTimeout) {
		t.Fatalf("err = %v, want ErrLockTimeout", err)
	}
}

func TestMutualExclusionAcrossInstances(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	lockers := []*Locker{e.locker(Options{}), e.locker(Options{}), e.locker(Options{})}

	// The counter lives in this process but the only thing ordering the
	// goroutines is Redis, which the race detector cannot see; so it is
	// read and written with separate atomic operations: a non-atomic
	// increment that loses updates if two holders overlap, without a
	// (false) data race report when they do not.
	var counter, inside atomic.Int64
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
			defer cancel()
			held, release, err := lockers[i%len(lockers)].Acquire(ctx, "call-1")
			if err != nil {
				t.Error(err)
				return
			}
			defer release()
			if n := inside.Add(1); n != 1 {
				t.Errorf("%d holders at once", n)
			}
			v := counter.Load()
			time.Sleep(200 * time.Microsecond)
			if held.Err() != nil {
				t.Errorf("held canceled while working: %v", context.Cause(held))
			}
			counter.Store(v + 1)
			inside.Add(-1)
		})
	}
	wg.Wait()
	if got := counter.Load(); got != 50 {
		t.Fatalf("counter = %d, want 50 (lost updates)", got)
	}
	if n := e.admin.Exists(context.Background(), e.prefix+"call-1").Val(); n != 0 {
		t.Fatal("lock key left behind after every holder released")
	}
}

func TestReleaseDeletesAndIsIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l := e.locker(Options{})
	ctx := context.Background()

	held, release := mustAcquire(t, l, ctx, "k")
	if v := e.admin.Get(ctx, e.prefix+"k").Val(); len(v) != 32 {
		t.Fatalf("lock value %q, want a 128-bit hex token", v)
	}
	if ttl := e.admin.PTTL(ctx, e.prefix+"k").Val(); ttl <= 9*time.Second || ttl > DefaultTTL {
		t.Fatalf("PTTL = %v, want about %v", ttl, DefaultTTL)
	}
	release()
	if !errors.Is(context.Cause(held), ErrReleased) {
		t.Fatalf("cause = %v, want ErrReleased", context.Cause(held))
	}
	if e.admin.Exists(ctx, e.prefix+"k").Val() != 0 {
		t.Fatal("key still exists after release")
	}

	// A second owner's lock survives the first owner's stray release.
	held2, _ := mustAcquire(t, l, ctx, "k")
	release()
	if held2.Err() != nil {
		t.Fatal("stray release canceled the next owner")
	}
	assertBusy(t, l, "k")
}

func TestReleaseByNonOwnerKeepsKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l := e.locker(Options{})
	ctx := context.Background()

	_, release := mustAcquire(t, l, ctx, "k")
	// Another owner took the key (our lease lapsed, say) before we release.
	if err := e.admin.Set(ctx, e.prefix+"k", "someone-else", redis.KeepTTL).Err(); err != nil {
		t.Fatal(err)
	}
	release()
	if v := e.admin.Get(ctx, e.prefix+"k").Val(); v != "someone-else" {
		t.Fatalf("after a non-owner's release the key holds %q, want someone-else's", v)
	}
}

func TestLostLockCancelsHeldAndExpires(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const ttl = 300 * time.Millisecond
	a := e.locker(Options{TTL: ttl})
	b := e.locker(Options{TTL: ttl})
	ctx := context.Background()

	start := time.Now()
	heldA, releaseA := mustAcquire(t, a, ctx, "k")
	// Make the key someone else's, keeping its TTL: A's next extension
	// (at TTL/3) must notice, give up, and stop extending, so the key
	// then expires on its own.
	if err := e.admin.Set(ctx, e.prefix+"k", "intruder", redis.KeepTTL).Err(); err != nil {
		t.Fatal(err)
	}

	select {
	case <-heldA.Done():
	case <-time.After(time.Second):
		t.Fatal("held not canceled after the lock was taken over")
	}
	lostAfter := time.Since(start)
	if !errors.Is(context.Cause(heldA), ErrLockLost) {
		t.Fatalf("cause = %v, want ErrLockLost", context.Cause(heldA))
	}
	if lostAfter >= ttl {
		t.Fatalf("held canceled after %v, want before the %v TTL", lostAfter, ttl)
	}

	// The lease expires and another instance can take the lock.
	ctxB, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	heldB, _ := mustAcquire(t, b, ctxB, "k")
	if d := time.Since(start); d < ttl-20*time.Millisecond {
		t.Fatalf("B acquired after %v, before the %v TTL could have lapsed", d, ttl)
	}
	// A's late release must not free B's lock.
	releaseA()
	if heldB.Err() != nil || e.admin.Exists(ctx, e.prefix+"k").Val() != 1 {
		t.Fatal("A's release after losing the lock freed B's")
	}
	assertBusy(t, a, "k")
}

func TestExtensionKeepsLockAlive(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const ttl = 300 * time.Millisecond
	a := e.locker(Options{TTL: ttl})
	b := e.locker(Options{TTL: ttl})
	ctx := context.Background()

	held, release := mustAcquire(t, a, ctx, "k")
	time.Sleep(3 * ttl) // work that outlasts the TTL three times over
	if held.Err() != nil {
		t.Fatalf("held canceled while the lock was being extended: %v", context.Cause(held))
	}
	assertBusy(t, b, "k")
	if pttl := e.admin.PTTL(ctx, e.prefix+"k").Val(); pttl <= 0 || pttl > ttl {
		t.Fatalf("PTTL = %v, want within (0, %v]", pttl, ttl)
	}

	release()
	ctxB, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	mustAcquire(t, b, ctxB, "k") // free at once, not after a TTL
}

func TestParentEndStopsExtending(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const ttl = 300 * time.Millisecond
	l := e.locker(Options{TTL: ttl})

	parent, cancel := context.WithCancel(context.Background())
	held, release := mustAcquire(t, l, parent, "k")
	cancel()
	if !errors.Is(held.Err(), context.Canceled) {
		t.Fatal("held not canceled with its parent")
	}
	// A holder that never calls release blocks the key for one TTL at most.
	time.Sleep(ttl + 100*time.Millisecond)
	if e.admin.Exists(context.Background(), e.prefix+"k").Val() != 0 {
		t.Fatal("lock still extended after its holder's ctx ended")
	}
	release()
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b := e.locker(Options{}), e.locker(Options{})
	mustAcquire(t, a, context.Background(), "k")

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := b.Acquire(ctx, "k")
	d := time.Since(start)
	if !errors.Is(err, consent.ErrLockTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrLockTimeout and DeadlineExceeded", err)
	}
	if d < 90*time.Millisecond || d > 500*time.Millisecond {
		t.Fatalf("gave up after %v, want about 100ms", d)
	}

	done, cancelDone := context.WithCancel(context.Background())
	cancelDone()
	if _, _, err := b.Acquire(done, "other"); !errors.Is(err, consent.ErrLockTimeout) {
		t.Fatalf("err = %v, want ErrLockTimeout for a ctx already canceled", err)
	}
}

func TestRedisUnreachable(t *testing.T) {
	t.Parallel()
	// Default client options, nothing tuned: a refused connection must
	// come back as an error well inside a webhook's 2s budget, not be
	// retried until ctx ends.
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	l := New(c, Options{Prefix: "unreachable:", Logger: slog.New(slog.DiscardHandler)})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, _, err := l.Acquire(ctx, "k")
	d := time.Since(start)
	if err == nil {
		t.Fatal("acquired a lock on an unreachable Redis")
	}
	if errors.Is(err, consent.ErrLockTimeout) {
		t.Fatalf("err = %v; want the connection error, not a timeout", err)
	}
	if d > time.Second {
		t.Fatalf("took %v to report %v, want under 1s", d, err)
	}
	t.Logf("after %v: %v", d, err)
}

func TestPartitionCancelsHeldBeforeTTL(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const ttl = 300 * time.Millisecond
	p := startProxy(t, e.opt.Addr)
	o := *e.opt
	o.Addr = p.addr()
	o.ContextTimeoutEnabled = true
	o.MaxRetries = -1
	pc := redis.NewClient(&o)
	t.Cleanup(func() { pc.Close() })
	a := New(pc, Options{Prefix: e.prefix, TTL: ttl, CommandTimeout: 100 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	b := e.locker(Options{TTL: ttl})

	start := time.Now()
	held, release := mustAcquire(t, a, context.Background(), "k")
	p.blackhole() // Redis stops answering A: requests vanish, no error

	select {
	case <-held.Done():
	case <-time.After(2 * ttl):
		t.Fatal("held not canceled while Redis was unreachable")
	}
	lostAfter := time.Since(start)
	if !errors.Is(context.Cause(held), ErrLockLost) {
		t.Fatalf("cause = %v, want ErrLockLost", context.Cause(held))
	}
	// Must give up before Redis could let another owner in.
	if lostAfter >= ttl {
		t.Fatalf("held canceled after %v, want before the %v TTL", lostAfter, ttl)
	}
	t.Logf("canceled after %v: %v", lostAfter, context.Cause(held))

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	mustAcquire(t, b, ctx, "k")
	if d := time.Since(start); d < ttl-20*time.Millisecond {
		t.Fatalf("B acquired after %v, before A's TTL could have lapsed", d)
	}

	// release cannot reach Redis either; it must still return promptly.
	rs := time.Now()
	release()
	if d := time.Since(rs); d > 500*time.Millisecond {
		t.Fatalf("release took %v with Redis unreachable", d)
	}
}

func TestKeysAreIndependent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	l := e.locker(Options{})
	mustAcquire(t, l, context.Background(), "a")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	mustAcquire(t, l, ctx, "b")
}

// proxy forwards TCP to Redis until told to drop everything, which looks to
// the client like a network partition: no error, just no answer.
type proxy struct {
	ln   net.Listener
	drop atomic.Bool
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			go p.pipe(c, u)
			go p.pipe(u, c)
		}
	}()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }
func (p *proxy) blackhole()   { p.drop.Store(true) }

func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.drop.Load() {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil { // EOF or closed: tear down both directions
			return
		}
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	url, prefix := testdb.Redis(b)
	opt, err := redis.ParseURL(url)
	if err != nil {
		b.Fatal(err)
	}
	opt.ContextTimeoutEnabled = true
	c := redis.NewClient(opt)
	defer c.Close()
	l := New(c, Options{Prefix: prefix})
	ctx := context.Background()
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		// One key per goroutine: each iteration is an uncontended SET NX
		// plus a compare-and-delete, the common webhook case.
		key := "call-" + strconv.FormatInt(next.Add(1), 10)
		for pb.Next() {
			_, release, err := l.Acquire(ctx, key)
			if err != nil {
				b.Error(err)
				return
			}
			release()
		}
	})
}

// A SET whose reply was lost and is sent again (go-redis's retry, or the
// next turn of Acquire's loop) finds its own token: that is ours, not a
// lock someone else holds.
func TestAcquireIsIdempotentPerToken(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	ctx := context.Background()
	rkey := e.prefix + "idempotent"
	ttl := int64(5000)
	for i, want := range []int{1, 1} {
		got, err := acquireScript.Run(ctx, c, []string{rkey}, "token-a", ttl).Int()
		if err != nil || got != want {
			t.Fatalf("send %d of the same token: %d, %v; want %d", i+1, got, err, want)
		}
	}
	if got, err := acquireScript.Run(ctx, c, []string{rkey}, "token-b", ttl).Int(); err != nil || got != 0 {
		t.Fatalf("another token: %d, %v; want 0 (held)", got, err)
	}
	if pttl := c.PTTL(ctx, rkey).Val(); pttl <= 0 || pttl > time.Duration(ttl)*time.Millisecond {
		t.Errorf("PTTL = %v, want the lock's TTL", pttl)
	}
}

// A waiter on another instance is woken by the holder's release message, not
// by its fallback poll: with the poll set to a minute, Acquire and Wait still
// return promptly after release.
func TestReleaseWakesWaitersOnOtherInstances(t *testing.T) {
	e := newEnv(t)
	holder := e.locker(Options{})
	waiter := e.locker(Options{RetryInterval: time.Minute, WakeupPoll: time.Minute})
	t.Cleanup(func() { _ = waiter.Close() })

	// Bring the waiter's subscription up before measuring: until it is
	// confirmed a waiter polls at RetryInterval.
	waiter.listen()
	deadline := time.Now().Add(5 * time.Second)
	for !waiter.subscribed.Load() {
		if time.Now().After(deadline) {
			t.Fatal("release subscription never came up")
		}
		time.Sleep(5 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, release := mustAcquire(t, holder, ctx, "call:a")
	if _, _, err := waiter.TryAcquire(ctx, "call:a"); !errors.Is(err, consent.ErrLockBusy) {
		t.Fatalf("TryAcquire on a held key: %v, want ErrLockBusy", err)
	}

	waited := make(chan error, 1)
	go func() { waited <- waiter.Wait(ctx, "call:a") }()
	acquired := make(chan error, 1)
	go func() {
		_, rel, err := waiter.Acquire(ctx, "call:a")
		if err == nil {
			rel()
		}
		acquired <- err
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-waited:
		t.Fatalf("Wait returned while the lock was held: %v", err)
	default:
	}
	released := time.Now()
	release()
	for _, ch := range []chan error{waited, acquired} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("waiter not woken by the release (fallback poll is a minute)")
		}
	}
	t.Logf("woken %v after release", time.Since(released).Round(time.Millisecond))
}

// Wait on a free key returns at once; on a key whose holder died it returns
// once the lease lapses, found by the fallback poll.
func TestWaitFreeAndLapsed(t *testing.T) {
	e := newEnv(t)
	l := e.locker(Options{WakeupPoll: 20 * time.Millisecond, RetryInterval: 20 * time.Millisecond})
	t.Cleanup(func() { _ = l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Wait(ctx, "free"); err != nil {
		t.Fatal(err)
	}
	// A dead holder: the key set directly, with a short lease, never released.
	if err := e.admin.Set(ctx, e.prefix+"dead", "someone", 200*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := l.Wait(ctx, "dead"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 150*time.Millisecond {
		t.Fatalf("Wait returned after %v, before the dead holder's lease lapsed", took)
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if err := e.admin.Set(ctx, e.prefix+"held", "someone", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if err := l.Wait(short, "held"); !errors.Is(err, consent.ErrLockTimeout) {
		t.Fatalf("Wait past ctx: %v, want ErrLockTimeout", err)
	}
}
