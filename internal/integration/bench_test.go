package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/relay"
	"github.com/consentline/consentline/relay/relaysqlite"
	"github.com/consentline/consentline/twiml"
)

// benchParallelism × GOMAXPROCS goroutines each play one call after
// another: 32 calls in flight at once on 2 cores, as a clinic's lines all
// answering at the top of the hour.
const benchParallelism = 16

// benchWarmUp is how many webhooks benchWebhooks plays before it measures.
const benchWarmUp = 1000

// BenchmarkDecisionsPostgresRedis measures consent decisions per second on
// the production backends: one instance (its own pgx pool and Redis client,
// as serve builds them) deciding many distinct calls at once. Each operation
// is one signed Gather callback for a new call, served by the real router
// called in-process (handler.ServeHTTP: no loopback socket): signature
// check, classification, Redis per-call lock, PostgreSQL look-up and insert
// (with, as serve wires it, the relay's audit entry in the same
// transaction), sealing, TwiML read-back, lock release.
//
// Sub-benchmarks: "serve" is serve's wiring without ZAPIER_WEBHOOK_URL
// (audit entry only), "serve+zapier" with it (a River delivery job too),
// "no-outbox" the decision path alone (no relay hook).
//
//	go test ./internal/integration -run '^$' -bench Decisions -benchtime 5s
func BenchmarkDecisionsPostgresRedis(b *testing.B) {
	for _, bc := range []struct {
		name string
		opts clusterOptions
	}{
		{"serve", clusterOptions{instances: 1}},
		{"serve+zapier", clusterOptions{instances: 1, deliver: true}},
		{"no-outbox", clusterOptions{instances: 1, noOutbox: true}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := newCluster(b, bc.opts)
			benchDecisions(b, c.instances[0].srv.Config.Handler, c.recordCount)
		})
	}
}

// BenchmarkDecisionsEmbedded is the same on the single-instance default:
// SQLite in a temporary directory and the in-process lock; "serve" with the
// relay's audit entry in each record's transaction, "no-outbox" without.
func BenchmarkDecisionsEmbedded(b *testing.B) {
	for _, outbox := range []bool{true, false} {
		name := "serve"
		if !outbox {
			name = "no-outbox"
		}
		b.Run(name, func(b *testing.B) {
			cfg, store := embeddedApp(b, outbox, false)
			benchDecisions(b, ivr.New(cfg), store.countRecords)
		})
	}
}

// embeddedStore is the single-instance default's store, for benchmarks.
type embeddedStore struct {
	*sqlitestore.Store
	b *testing.B
}

func (s embeddedStore) countRecords() int {
	var n int
	if err := s.DB().QueryRow(`SELECT count(*) FROM consent_records`).Scan(&n); err != nil {
		s.b.Fatal(err)
	}
	return n
}

// embeddedApp is serve's wiring on the embedded default: SQLite in a
// temporary directory and the in-process lock; with outbox, each record's
// relay event (and, with deliver, its delivery job) in its transaction.
func embeddedApp(b *testing.B, outbox, deliver bool) (ivr.Config, embeddedStore) {
	ctx := context.Background()
	keys, err := pii.NewKeyring(testKey)
	if err != nil {
		b.Fatal(err)
	}
	opts := sqlitestore.Options{Migrate: true}
	if outbox {
		ob, err := relay.NewOutbox(relaysqlite.New(nil), keys, deliver)
		if err != nil {
			b.Fatal(err)
		}
		opts.Outbox = ob
	}
	store, err := sqlitestore.Open(ctx, b.TempDir(), opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	if err := relaysqlite.Migrate(ctx, store.DB()); err != nil {
		b.Fatal(err)
	}
	cfg, err := newApp(ctx, store, memlock.New(), store.Ping, keys, twiml.Builtin(), slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	if deliver {
		rel, err := benchRelay(ctx, store, keys, true, func(c relay.Config) (*relay.Relay, error) { return relay.New(relaysqlite.New(store.DB()), c) })
		if err != nil {
			b.Fatal(err)
		}
		cfg.CallCompleted = callCompleted(rel)
	}
	return cfg, embeddedStore{store, b}
}

// BenchmarkStatusCallbacks measures signed status callbacks per second:
// each the final one of a new call that ended without a decision, so the
// instance records no_response (per-call lock, the record and its audit
// entry) and relays call.completed (its audit entry), each with a River
// delivery job, as serve does with ZAPIER_WEBHOOK_URL set.
//
//	go test ./internal/integration -run '^$' -bench StatusCallbacks -benchtime 3000x
func BenchmarkStatusCallbacks(b *testing.B) {
	b.Run("postgres+redis", func(b *testing.B) {
		c := newCluster(b, clusterOptions{instances: 1, deliver: true, callCompleted: true})
		benchStatus(b, c.instances[0].srv.Config.Handler, c.recordCount)
	})
	b.Run("embedded", func(b *testing.B) {
		cfg, store := embeddedApp(b, true, true)
		benchStatus(b, ivr.New(cfg), store.countRecords)
	})
}

var benchRun atomic.Int64

// benchDecisions: each operation is a Gather callback deciding a new call.
func benchDecisions(b *testing.B, handler http.Handler, count func() int) {
	action := publicBase + ivr.PathGather + "?attempt=0&lang=en-US&t0=1800000000000"
	answers := []url.Values{
		{"SpeechResult": {"yes I agree"}, "Confidence": {"0.91"}},
		{"SpeechResult": {"no I do not agree"}, "Confidence": {"0.88"}},
		{"Digits": {"1"}},
	}
	benchWebhooks(b, handler, count, "decisions/s", action, func(i int64) url.Values {
		return answers[i%int64(len(answers))]
	}, func(code int, body string) (bool, error) {
		if code != http.StatusOK {
			return false, fmt.Errorf("status %d: %s", code, body)
		}
		return strings.Contains(body, "<Hangup"), nil // else a hold, or a re-prompt: no decision
	})
}

// benchStatus: each operation is the final status callback of a new call
// that ended without a decision: a no_response record and the
// call.completed event (each with its audit entry).
func benchStatus(b *testing.B, handler http.Handler, count func() int) {
	benchWebhooks(b, handler, count, "callbacks/s", publicBase+ivr.PathStatus, func(int64) url.Values {
		return url.Values{"CallStatus": {"completed"}, "CallDuration": {"42"}}
	}, func(code int, body string) (bool, error) {
		switch code {
		case http.StatusNoContent:
			return true, nil
		case http.StatusServiceUnavailable:
			return false, nil // not taken: Twilio would retry
		}
		return false, fmt.Errorf("status %d: %s", code, body)
	})
}

// benchWebhooks plays b.N signed webhooks to action, one new call each,
// from benchParallelism × GOMAXPROCS goroutines, and reports the rate as
// unit with p50/p99/max latency. ok says whether an answer recorded its
// call; count must grow by one record per operation.
func benchWebhooks(b *testing.B, handler http.Handler, count func() int, unit, action string,
	params func(i int64) url.Values, ok func(code int, body string) (bool, error)) {
	target := strings.TrimPrefix(action, publicBase)
	twilio := &twiliosim.Twilio{PublicBaseURL: publicBase, AuthToken: authToken, AccountSID: accountSID}
	run := benchRun.Add(1) // call SIDs distinct across b.N rounds

	// The webhooks are signed beforehand: the load generator shares the
	// machine's two cores with the instance, and what it spends is not
	// the instance's to spend.
	sign := func(i int) twiliosim.Signed {
		call := &twiliosim.Call{Twilio: twilio, SID: fmt.Sprintf("CA%08d%024d", run, i), From: "+14155550123", To: "+18005550199"}
		return twiliosim.SignWebhook(authToken, action, call.Params(params(int64(i))))
	}
	// Warm-up, not measured: each round starts on a new cluster, whose
	// first webhooks open the pools' connections and prepare their
	// statements. At -benchtime 6000x those few dozen slow answers were
	// the p99 itself; a running instance has paid for them long before.
	warm := make(chan twiliosim.Signed, benchWarmUp)
	for i := range benchWarmUp {
		warm <- sign(b.N + i) // distinct from the measured calls 0 … b.N-1
	}
	close(warm)
	var wg sync.WaitGroup
	for range benchParallelism * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for hook := range warm {
				handler.ServeHTTP(&twiliosim.Answer{}, hook.Request(target))
			}
		})
	}
	wg.Wait()
	before := count()

	hooks := make([]twiliosim.Signed, b.N)
	for i := range hooks {
		hooks[i] = sign(i)
	}

	var (
		next      atomic.Int64
		missed    atomic.Int64
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, b.N)
	)
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		mine := make([]time.Duration, 0, 1024)
		for pb.Next() {
			hook := hooks[next.Add(1)-1]
			req := hook.Request(target)
			w := &twiliosim.Answer{}

			start := time.Now()
			handler.ServeHTTP(w, req)
			mine = append(mine, time.Since(start))

			recorded, err := ok(w.Code, w.Body.String())
			if err != nil {
				b.Error(err)
			} else if !recorded {
				missed.Add(1)
			}
		}
		mu.Lock()
		latencies = append(latencies, mine...)
		mu.Unlock()
	})
	b.StopTimer()

	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), unit)
	slices.Sort(latencies)
	b.ReportMetric(ms(latencies[len(latencies)/2]), "p50-ms")
	b.ReportMetric(ms(latencies[len(latencies)*99/100]), "p99-ms")
	b.ReportMetric(ms(latencies[len(latencies)-1]), "max-ms")
	if h := missed.Load(); h > 0 {
		b.Errorf("%d of %d callbacks recorded nothing (a dependency failed or timed out)", h, b.N)
	}
	if got := count() - before; got != b.N {
		b.Errorf("%d records for %d webhooks", got, b.N)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
