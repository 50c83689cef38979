package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/relay"
)

// BenchmarkDecisionToDelivery measures a decision's way to the CRM: from
// posting a signed Gather callback (the caller pressed 1 or 2) to the real
// ivr router, through consent.Service, the store and the outbox (record,
// audit entry and River job in one transaction), to River picking the job
// up and the relay posting the signed event to a local catch hook. The relay
// is configured as `consentline serve` configures it, with RELAY_RATE_LIMIT
// at its maximum (1,000/s; the default 30/s is Zapier's limit).
//
// Callers run closed-loop, each waiting only for its TwiML read-back (as
// Twilio does), so decisions arrive as fast as the server takes them and
// deliveries must keep up: callers=1 shows the pipeline's own latency,
// callers=8 sustained load. Reported:
//
//	p50-ms, p99-ms  latency from posting the decision to the hook receiving the event
//	events/s        events received / (last receipt - first decision)
//
//	go test ./internal/e2e -run '^$' -bench DecisionToDelivery -benchtime 2000x
//
// rate=500 is open-loop instead: a decision is due every 2 ms whether or not
// earlier ones were answered (as independent callers are), latency counts
// from its due time, and events/s shows whether 500/s is sustained.
func BenchmarkDecisionToDelivery(b *testing.B) {
	for _, backend := range []string{"postgres", "sqlite"} {
		for _, callers := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/callers=%d", backend, callers), func(b *testing.B) {
				benchDecisionToDelivery(b, backend, callers, 0)
			})
		}
		b.Run(backend+"/rate=500", func(b *testing.B) {
			benchDecisionToDelivery(b, backend, 64, 500)
		})
		b.Run(backend+"/backlog", func(b *testing.B) { benchBacklog(b, backend) })
	}
}

// benchBacklog measures catching up after an outage: b.N decisions are
// recorded while the relay is stopped (their jobs queue in the database),
// then the relay starts and events/s is b.N over the time from its start
// to the last event reaching the hook.
func benchBacklog(b *testing.B, backend string) {
	ctx := context.Background()
	hook := newCatchHook(b)
	st := newStack(b, stackOptions{backend: backend, hookURL: hook.hookURL(),
		configure: func(c *relay.Config) { c.RateLimit = relay.MaxRateLimit }})
	var (
		mu      sync.Mutex
		arrived = map[string]bool{}
		done    = make(chan struct{})
	)
	tag := randomHex(3)
	prefix := callSID(tag, 0)[:8]
	hook.setOnArrive(func(req *hookReq) {
		sid := req.Event.CallSID
		if !strings.HasPrefix(sid, prefix) {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !arrived[sid] {
			arrived[sid] = true
			if len(arrived) == b.N {
				close(done)
			}
		}
	})
	action, err := gatherAction(ctx, st.twilio, callSID("ffff", 0))
	if err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < b.N; i = int(next.Add(1)) - 1 {
				c := &twiliosim.Call{Twilio: st.twilio, SID: callSID(tag, i), From: callerNumber(i), To: calledNumber}
				if err := answerKey(ctx, c, action, "1"); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		return
	}
	b.ResetTimer()
	start := time.Now()
	st.start(b)
	select {
	case <-done:
	case <-time.After(120 * time.Second):
		mu.Lock()
		n := len(arrived)
		mu.Unlock()
		b.Fatalf("only %d of %d queued events reached the hook within 120 s", n, b.N)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	assertNoPHI(b, "server logs", st.logs.String())
}

// benchRig is one stack and its hook, shared by every run of one
// sub-benchmark (the framework calls the function again with a larger b.N).
type benchRig struct {
	st     *stack
	hook   *catchHook
	action string

	mu      sync.Mutex
	arrived map[string]time.Time // call sid -> when its event reached the hook
	prefix  string               // call sids of the current run start with it
	want    int
	done    chan struct{}
}

var rigs sync.Map // *testing.B -> *benchRig

// benchDecisionToDelivery runs b.N decisions with callers goroutines, closed
// loop, or open loop at rate decisions/s when rate > 0.
func benchDecisionToDelivery(b *testing.B, backend string, callers, rate int) {
	ctx := context.Background()
	v, ok := rigs.Load(b)
	if !ok {
		hook := newCatchHook(b)
		// RELAY_RATE_LIMIT at its maximum: the default (30/s) is Zapier's
		// limit, which a local hook does not have, and this measures what
		// the relay itself can deliver (catching up after an outage).
		st := newStack(b, stackOptions{backend: backend, hookURL: hook.hookURL(),
			configure: func(c *relay.Config) { c.RateLimit = relay.MaxRateLimit }})
		rig := &benchRig{st: st, hook: hook}
		hook.setOnArrive(rig.arrive)
		st.start(b)
		var err error
		if rig.action, err = gatherAction(ctx, st.twilio, callSID("ffff", 0)); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			rigs.Delete(b)
			assertNoPHI(b, "server logs", st.logs.String())
		})
		v = rig
		rigs.Store(b, rig)
	}
	rig := v.(*benchRig)
	tag := randomHex(3)

	rig.mu.Lock()
	rig.arrived, rig.want, rig.done = make(map[string]time.Time, b.N), b.N, make(chan struct{})
	rig.prefix = callSID(tag, 0)[:8]
	done := rig.done
	rig.mu.Unlock()

	sent := make([]time.Time, b.N)
	sids := make([]string, b.N)
	for i := range sids {
		sids[i] = callSID(tag, i)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	b.ResetTimer()
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				c := &twiliosim.Call{Twilio: rig.st.twilio, SID: sids[i], From: callerNumber(i), To: calledNumber}
				digits := "1"
				if i%2 == 1 {
					digits = "2"
				}
				sent[i] = time.Now()
				if rate > 0 {
					due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
					time.Sleep(time.Until(due))
					sent[i] = due
				}
				if err := answerKey(ctx, c, rig.action, digits); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		rig.mu.Lock()
		n := len(rig.arrived)
		rig.mu.Unlock()
		b.Fatalf("only %d of %d events reached the hook within 60 s", n, b.N)
	}
	b.StopTimer()

	rig.mu.Lock()
	defer rig.mu.Unlock()
	lat := make([]time.Duration, b.N)
	var last time.Time
	for i, sid := range sids {
		at := rig.arrived[sid]
		lat[i] = at.Sub(sent[i])
		if at.After(last) {
			last = at
		}
	}
	slices.Sort(lat)
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[min(len(lat)-1, len(lat)*99/100)]), "p99-ms")
	b.ReportMetric(float64(b.N)/last.Sub(sent[0]).Seconds(), "events/s")
}

// arrive notes an event's receipt (the hook calls it for every request).
func (r *benchRig) arrive(req *hookReq) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.arrived == nil || !strings.HasPrefix(req.Event.CallSID, r.prefix) {
		return
	}
	if _, dup := r.arrived[req.Event.CallSID]; dup {
		return
	}
	r.arrived[req.Event.CallSID] = req.At
	if len(r.arrived) == r.want {
		close(r.done)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
