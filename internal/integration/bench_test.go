package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/pii"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/relay"
	"github.com/consentline/consentline/twiml"
)

// benchParallelism × GOMAXPROCS goroutines each play one call after
// another: 32 calls in flight at once on 2 cores, as a clinic's lines all
// answering at the top of the hour.
const benchParallelism = 16

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
			benchDecisions(b, c.instances[0].srv.Config.Handler, func() int {
				var n int
				if err := c.admin.QueryRow(context.Background(), `SELECT count(*) FROM consent_records`).Scan(&n); err != nil {
					b.Fatal(err)
				}
				return n
			})
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
			ctx := context.Background()
			keys, err := pii.NewKeyring(testKey)
			if err != nil {
				b.Fatal(err)
			}
			opts := sqlitestore.Options{Migrate: true}
			if outbox {
				ob, err := relay.NewOutbox(keys, false)
				if err != nil {
					b.Fatal(err)
				}
				opts.AfterInsert = ob.SQLiteAfterInsert
			}
			store, err := sqlitestore.Open(ctx, b.TempDir(), opts)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { store.Close() })
			if err := relay.MigrateSQLite(ctx, store.DB()); err != nil {
				b.Fatal(err)
			}
			cfg, err := newApp(ctx, store, memlock.New(), store.Ping, keys, twiml.Builtin(), slog.New(slog.NewJSONHandler(io.Discard, nil)))
			if err != nil {
				b.Fatal(err)
			}
			benchDecisions(b, ivr.New(cfg), func() int {
				var n int
				if err := store.DB().QueryRow(`SELECT count(*) FROM consent_records`).Scan(&n); err != nil {
					b.Fatal(err)
				}
				return n
			})
		})
	}
}

var benchRun atomic.Int64

func benchDecisions(b *testing.B, handler http.Handler, count func() int) {
	action := publicBase + ivr.PathGather + "?attempt=0&lang=en-US&t0=1800000000000"
	target := strings.TrimPrefix(action, publicBase)
	answers := []url.Values{
		{"SpeechResult": {"yes I agree"}, "Confidence": {"0.91"}},
		{"SpeechResult": {"no I do not agree"}, "Confidence": {"0.88"}},
		{"Digits": {"1"}},
	}
	twilio := &twiliosim.Twilio{PublicBaseURL: publicBase, AuthToken: authToken, AccountSID: accountSID}
	run := benchRun.Add(1) // call SIDs distinct across b.N rounds
	before := count()

	var (
		next      atomic.Int64
		holds     atomic.Int64
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, b.N)
	)
	b.SetParallelism(benchParallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		mine := make([]time.Duration, 0, 1024)
		for pb.Next() {
			i := next.Add(1)
			call := &twiliosim.Call{Twilio: twilio, SID: fmt.Sprintf("CA%08d%024d", run, i), From: "+14155550123", To: "+18005550199"}
			params := call.Params(answers[i%int64(len(answers))])
			req := httptest.NewRequest(http.MethodPost, target, strings.NewReader(params.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("X-Twilio-Signature", twiliosim.Sign(authToken, action, params))
			w := httptest.NewRecorder()

			start := time.Now()
			handler.ServeHTTP(w, req)
			mine = append(mine, time.Since(start))

			switch body := w.Body.String(); {
			case w.Code != http.StatusOK:
				b.Errorf("status %d: %s", w.Code, body)
			case !strings.Contains(body, "<Hangup"):
				holds.Add(1) // a hold, or a re-prompt: no decision
			}
		}
		mu.Lock()
		latencies = append(latencies, mine...)
		mu.Unlock()
	})
	b.StopTimer()

	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
	slices.Sort(latencies)
	b.ReportMetric(ms(latencies[len(latencies)/2]), "p50-ms")
	b.ReportMetric(ms(latencies[len(latencies)*99/100]), "p99-ms")
	b.ReportMetric(ms(latencies[len(latencies)-1]), "max-ms")
	if h := holds.Load(); h > 0 {
		b.Errorf("%d of %d callbacks decided nothing (held: a dependency failed or timed out)", h, b.N)
	}
	if got := count() - before; got != b.N {
		b.Errorf("%d records for %d decisions", got, b.N)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
