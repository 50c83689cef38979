package integration

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/redislock"
	"github.com/consentline/consentline/internal/faultproxy"
)

// heldCall is a call whose answer was held, with the hold TwiML Twilio got.
type heldCall struct {
	cl   *call
	inst int
	hold []byte
}

// decideDuringFault starts calls, then (with the fault in place) delivers
// each one's final result to every instance and a partial to one, all at
// once. Every answer must be a timely hold (or a timely empty 204 for a
// partial), and nothing may be recorded.
func (c *cluster) decideDuringFault(t *testing.T, calls int) []heldCall {
	t.Helper()
	ctx := context.Background()
	var cls []*call
	for range calls {
		cls = append(cls, c.newCall(ctx)) // incoming needs neither backend
	}
	return c.deliverDuringFault(t, cls)
}

func (c *cluster) deliverDuringFault(t *testing.T, cls []*call) []heldCall {
	t.Helper()
	ctx := context.Background()
	var (
		mu    sync.Mutex
		held  []heldCall
		parts []delivery
		fns   []func()
	)
	for _, cl := range cls {
		for inst := range c.instances {
			fns = append(fns, func() {
				d := c.post(ctx, inst, cl, cl.action, speechYes)
				mu.Lock()
				defer mu.Unlock()
				checkHold(t, d)
				held = append(held, heldCall{cl, inst, d.body})
			})
		}
		fns = append(fns, func() {
			d := c.post(ctx, 0, cl, cl.partial, partialYes)
			mu.Lock()
			defer mu.Unlock()
			parts = append(parts, d)
		})
	}
	fire(fns...)
	for _, d := range parts {
		checkTimely(t, d, http.StatusNoContent)
	}
	for _, cl := range cls {
		if n := c.records(cl.sid); n != 0 {
			t.Errorf("%s: %d records while a backend was failing, want 0", cl.sid, n)
		}
	}
	return held
}

// retryHeld plays Twilio's side after each hold: follow the Redirect to
// /voice/resume, the caller answers the re-prompt again; a further hold is
// followed again, until patience runs out. Each follow-up starts after a
// random wait below spread (at least 50 ms), standing in for the hold line,
// the pause and the caller's reply. Every answer must be valid TwiML, and
// with timed set come within the webhook budget; it returns each call's
// read-back decisions.
func (c *cluster) retryHeld(t testing.TB, held []heldCall, patience, spread time.Duration, timed bool) map[*call][]consent.Decision {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	var (
		mu  sync.Mutex
		out = map[*call][]consent.Decision{}
		wg  sync.WaitGroup
	)
	for _, h := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := h.hold
			for {
				time.Sleep(max(50*time.Millisecond, rand.N(spread)))
				resume, d := c.followHold(ctx, h.inst, h.cl, body, speechYes, timed)
				if resume.err != nil || d.err != nil || d.status != http.StatusOK {
					t.Errorf("%s: retry on instance %d: status %d/%d, %v %v", h.cl.sid, h.inst, resume.status, d.status, resume.err, d.err)
					return
				}
				if timed {
					checkTimely(t, d, http.StatusOK)
				}
				if isHold(d.body) {
					if time.Since(start) > patience {
						t.Errorf("%s: still held %v after the first retry", h.cl.sid, time.Since(start).Round(time.Millisecond))
						return
					}
					body = d.body
					continue
				}
				dec, ok := c.readBack(d)
				if !ok {
					t.Errorf("%s: a retry on instance %d answered neither a read-back nor a hold:\n%s", h.cl.sid, h.inst, d.body)
				}
				mu.Lock()
				out[h.cl] = append(out[h.cl], dec)
				mu.Unlock()
				return
			}
		}()
	}
	wg.Wait()
	return out
}

// recoverHeld retries held deliveries after a fault (retryHeld, briskly);
// each call must end read back as granted, with exactly one record.
func (c *cluster) recoverHeld(t *testing.T, held []heldCall, patience time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	decs := c.retryHeld(t, held, patience, 100*time.Millisecond, true)
	took := time.Since(start)
	seen := map[string]bool{}
	for _, h := range held {
		if seen[h.cl.sid] {
			continue
		}
		seen[h.cl.sid] = true
		if n := c.records(h.cl.sid); n != 1 {
			t.Errorf("%s: %d records after recovery, want exactly 1", h.cl.sid, n)
		}
		for _, d := range decs[h.cl] {
			if d != consent.Granted {
				t.Errorf("%s: read back %s after the fault, want granted", h.cl.sid, d)
			}
		}
	}
	return took
}

// checkReady asks every instance's /readyz at once and checks the status,
// and for a 503 that the body is reason exactly: the failing backend's
// name and nothing more (the detail goes to the log).
func (c *cluster) checkReady(t *testing.T, wantStatus int, reason string) {
	t.Helper()
	var fns []func()
	for i := range c.instances {
		fns = append(fns, func() {
			start := time.Now()
			status, body := c.get(context.Background(), i, "/readyz")
			if took := time.Since(start); took >= webhookBudget {
				t.Errorf("instance %d: /readyz took %v", i, took)
			}
			if status != wantStatus || (reason != "" && body != reason) {
				t.Errorf("instance %d: /readyz = %d %q, want %d naming %q", i, status, strings.TrimSpace(body), wantStatus, reason)
			}
		})
	}
	fire(fns...)
}

// warmUp decides one call on every instance, so that each has pooled
// connections to lose.
func (c *cluster) warmUp(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for inst := range c.instances {
		cl := c.newCall(ctx)
		d := c.post(ctx, inst, cl, cl.action, keyYes)
		if dec, ok := c.readBack(d); !checkTimely(t, d, http.StatusOK) || !ok || dec != consent.Granted {
			t.Fatalf("warm-up on instance %d: %s", inst, d.body)
		}
	}
}

func TestRedisRefused(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{proxyRedis: true})
	c.warmUp(t)

	c.rdProxy.Refuse()
	held := c.decideDuringFault(t, 4)
	c.checkReady(t, http.StatusServiceUnavailable, "not ready: redis\n")

	if err := c.rdProxy.Resume(); err != nil {
		t.Fatal(err)
	}
	took := c.recoverHeld(t, held, 5*time.Second)
	c.checkReady(t, http.StatusOK, "")
	t.Logf("recovered %d held deliveries in %v", len(held), took.Round(time.Millisecond))
}

// A Redis that accepts connections but never answers: only deadlines end
// the wait (redislock's CommandTimeout, and go-redis honouring the context
// because NewClient sets ContextTimeoutEnabled).
func TestRedisStalled(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{proxyRedis: true})
	c.warmUp(t)

	if err := c.rdProxy.Stall(); err != nil {
		t.Fatal(err)
	}
	held := c.decideDuringFault(t, 4)
	c.checkReady(t, http.StatusServiceUnavailable, "not ready: redis\n")

	if err := c.rdProxy.Resume(); err != nil {
		t.Fatal(err)
	}
	// The stalled SET NX commands reach Redis when it catches up, after
	// their Acquire gave up: such a call's lock is held by nobody until its
	// lease lapses, so its retries hold until then, and no longer.
	took := c.recoverHeld(t, held, redislock.WebhookTTL+2*time.Second)
	c.checkReady(t, http.StatusOK, "")
	t.Logf("recovered %d held deliveries in %v", len(held), took.Round(time.Millisecond))
}

func TestPostgresRefused(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{proxyPostgres: true})
	c.warmUp(t)

	c.pgProxy.Refuse()
	held := c.decideDuringFault(t, 4)
	c.checkReady(t, http.StatusServiceUnavailable, "not ready: postgres\n")

	if err := c.pgProxy.Resume(); err != nil {
		t.Fatal(err)
	}
	took := c.recoverHeld(t, held, 5*time.Second)
	c.checkReady(t, http.StatusOK, "")
	t.Logf("recovered %d held deliveries in %v", len(held), took.Round(time.Millisecond))
}

// A PostgreSQL that accepts connections but never answers.
func TestPostgresStalled(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{proxyPostgres: true})
	c.warmUp(t)

	if err := c.pgProxy.Stall(); err != nil {
		t.Fatal(err)
	}
	held := c.decideDuringFault(t, 2)
	c.checkReady(t, http.StatusServiceUnavailable, "not ready: postgres\n")

	if err := c.pgProxy.Resume(); err != nil {
		t.Fatal(err)
	}
	took := c.recoverHeld(t, held, 5*time.Second)
	c.checkReady(t, http.StatusOK, "")
	t.Logf("recovered %d held deliveries in %v", len(held), took.Round(time.Millisecond))
}

// TestPostgresRestart drops every PostgreSQL connection (what a restart or
// failover looks like to a pool) while 50 calls are being decided, each
// delivered twice to different instances. No answer may miss the deadline;
// each is a read-back or a hold; after Twilio-style retries of the held
// ones every call has exactly one record, and every read-back of a call
// names that record's decision.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{proxyPostgres: true})
	c.decideThroughRestart(t, c.pgProxy)
}

// TestRedisRestart is the same for Redis: every lock connection dropped
// while 50 calls are being decided.
func TestRedisRestart(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{proxyRedis: true})
	c.decideThroughRestart(t, c.rdProxy)
}

// decideThroughRestart decides 50 calls, each delivered twice to different
// instances, while p drops all its connections twice; see
// TestPostgresRestart.
func (c *cluster) decideThroughRestart(t *testing.T, p *faultproxy.Proxy) {
	t.Helper()
	c.warmUp(t)
	ctx := context.Background()

	const calls = 50
	var cls []*call
	for range calls {
		cls = append(cls, c.newCall(ctx))
	}
	var (
		mu        sync.Mutex
		held      []heldCall
		readBacks = map[*call][]consent.Decision{}
		fns       []func()
		dropped   []int
	)
	for i, cl := range cls {
		answer := speechYes
		if i%2 == 1 {
			answer = keyNo
		}
		for k := range 2 {
			inst := (i + k) % len(c.instances)
			fns = append(fns, func() {
				d := c.post(ctx, inst, cl, cl.action, answer)
				mu.Lock()
				defer mu.Unlock()
				if !checkTimely(t, d, http.StatusOK) {
					return
				}
				if isHold(d.body) {
					held = append(held, heldCall{cl, inst, d.body})
					return
				}
				dec, ok := c.readBack(d)
				if !ok {
					t.Errorf("%s: neither a read-back nor a hold:\n%s", cl.sid, d.body)
				}
				readBacks[cl] = append(readBacks[cl], dec)
			})
		}
	}
	// The "restart": all connections dropped while the deliveries are in
	// flight, twice: once 20 answers are out, and again after 60, hitting
	// the connections dialed since.
	base := c.served.Load()
	fns = append(fns, func() {
		for _, after := range []int64{20, 60} {
			for deadline := time.Now().Add(5 * time.Second); c.served.Load() < base+after && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			n := p.DropAll()
			mu.Lock()
			dropped = append(dropped, n)
			mu.Unlock()
		}
	})
	fire(fns...)
	if dropped[0] == 0 {
		t.Errorf("the drop found no open connections: the test injected no fault")
	}

	// Twilio's retries of the held ones.
	for cl, decs := range c.retryHeld(t, held, 10*time.Second, 200*time.Millisecond, true) {
		readBacks[cl] = append(readBacks[cl], decs...)
	}

	for _, cl := range cls {
		if n := c.records(cl.sid); n != 1 {
			t.Errorf("%s: %d records, want exactly 1", cl.sid, n)
			continue
		}
		want := c.stored(cl.sid)
		if len(readBacks[cl]) != 2 {
			t.Errorf("%s: %d read-backs, want 2", cl.sid, len(readBacks[cl]))
		}
		for _, got := range readBacks[cl] {
			if got != want {
				t.Errorf("%s: read back %s, stored %s", cl.sid, got, want)
			}
		}
	}
	// The pools recovered: every instance is ready and decides a new call.
	c.checkReady(t, http.StatusOK, "")
	c.warmUp(t)
	if p.Mode() != faultproxy.Pass {
		t.Fatal("proxy not passing")
	}
	t.Logf("dropped %v connections; %d of %d deliveries held, then retried; slowest inside the server %v",
		dropped, len(held), 2*calls, time.Duration(c.slowest.Load()).Round(time.Millisecond))
}
