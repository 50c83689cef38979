package ivr_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
)

// BenchmarkGatherDecision measures one signed Gather callback through the
// whole router — signature check, classification, per-call lock, sealing,
// and a real SQLite commit — for a new call each time. It reports p50/p99
// latency besides ns/op.
//
//	go test ./ivr -run '^$' -bench GatherDecision -benchmem
func BenchmarkGatherDecision(b *testing.B) {
	h := newHarness(b, b.TempDir())
	handler := h.srv.Config.Handler
	action := publicBase + ivr.PathGather + "?attempt=0&lang=en-US&t0=1800000000000"
	path := strings.TrimPrefix(action, publicBase)
	answers := []url.Values{
		{"SpeechResult": {"yes I agree"}, "Confidence": {"0.91"}},
		{"SpeechResult": {"no I do not agree"}, "Confidence": {"0.88"}},
		{"Digits": {"1"}},
	}
	latencies := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		call := &twiliosim.Call{Twilio: h.twilio, SID: fmt.Sprintf("CA%032x", i), From: "+14155550123", To: "+18005550199"}
		params := call.Params(answers[i%len(answers)])
		body := params.Encode()
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-Twilio-Signature", twiliosim.Sign(authToken, action, params))
		w := httptest.NewRecorder()
		b.StartTimer()

		start := time.Now()
		handler.ServeHTTP(w, req)
		latencies = append(latencies, time.Since(start))
		if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "<Hangup") {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
	b.StopTimer()
	slices.Sort(latencies)
	b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds()), "p99-µs")
}

// blockingStore holds the Record of one call until released: the work
// behind that call's webhook keeps its admission slot as long as the
// benchmark needs.
type blockingStore struct {
	consent.Store
	callSID string
	release chan struct{}
	entered chan<- struct{} // told when the call's Record starts waiting (nil: not told)
}

// blockedService is a consent service on a new embedded store whose
// Record of the call named name waits until blocked.release is closed
// (entered, when set, is told when it starts waiting).
func blockedService(tb testing.TB, name string, entered chan<- struct{}) (*consent.Service, blockingStore) {
	tb.Helper()
	store, err := sqlitestore.Open(context.Background(), tb.TempDir(), sqlitestore.Options{Migrate: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { store.Close() })
	keys, err := pii.NewKeyring(testKey)
	if err != nil {
		tb.Fatal(err)
	}
	blocked := blockingStore{Store: store, callSID: callSID(name), release: make(chan struct{}), entered: entered}
	return consent.NewService(consent.Config{
		Store: blocked, Locker: memlock.New(), Threshold: consent.DefaultThreshold,
		Seal: keys.SealFor, Open: keys.OpenFor, PatientRef: func(string) string { return "pr_blocked" },
	}), blocked
}

func (s blockingStore) Record(ctx context.Context, rec consent.Record) (consent.Record, bool, error) {
	if rec.CallSID == s.callSID {
		if s.entered != nil {
			s.entered <- struct{}{}
		}
		<-s.release
	}
	return s.Store.Record(ctx, rec)
}

// BenchmarkGatherRefused measures what a webhook costs an instance past
// its capacity: a signed Gather callback through the whole router
// (signature, form and shape checks) to admission, which refuses it, and
// the hold line it is answered with. The one admission slot is held by
// another call's decision throughout, and work waits 1 ns for a slot.
// Reported: cpu-µs/op, the process's CPU per refused webhook (getrusage),
// which is what the refusals take from the decisions.
// This is the cost that 9 of every 10 webhooks under a 10× overload add
// (BenchmarkOverload). Sub-benchmarks: "handler" is the IVR's handler
// alone, "served" behind serve's stack (telemetry.Serve).
//
//	go test ./ivr -run '^$' -bench GatherRefused -benchmem
func BenchmarkGatherRefused(b *testing.B) {
	b.Run("handler", func(b *testing.B) { benchGatherRefused(b, false) })
	b.Run("served", func(b *testing.B) { benchGatherRefused(b, true) })
}

// benchGatherRefused is BenchmarkGatherRefused with the IVR's handler
// bare, or served as serve serves it (telemetry.Serve: request id, access
// log to /dev/null, metrics, recoverer).
func benchGatherRefused(b *testing.B, served bool) {
	svc, blocked := blockedService(b, "occupant", nil)
	h := newHarness(b, b.TempDir(), func(c *ivr.Config) {
		c.Consent, c.MaxInFlight, c.MinInFlight, c.AdmitWait = svc, 1, 1, time.Nanosecond
		c.Logger = slog.New(slog.DiscardHandler)
	})
	handler := h.srv.Config.Handler
	if served {
		devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer devnull.Close()
		handler = telemetry.Serve(h.ivr.Router(), slog.New(slog.NewJSONHandler(devnull, nil)), telemetry.New(), "")
	}
	action := publicBase + ivr.PathGather + "?attempt=0&lang=en-US&t0=1800000000000"
	path := strings.TrimPrefix(action, publicBase)
	post := func(sid string) *httptest.ResponseRecorder {
		call := &twiliosim.Call{Twilio: h.twilio, SID: sid, From: "+14155550123", To: "+18005550199"}
		params := call.Params(url.Values{"Digits": {"1"}})
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(params.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-Twilio-Signature", twiliosim.Sign(authToken, action, params))
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, req)
		return w
	}
	occupied := make(chan struct{})
	go func() { defer close(occupied); post(blocked.callSID) }()
	defer func() { close(blocked.release); <-occupied }()
	time.Sleep(50 * time.Millisecond) // the occupant has its slot

	hooks := make([]twiliosim.Signed, b.N)
	for i := range hooks {
		call := &twiliosim.Call{Twilio: h.twilio, SID: fmt.Sprintf("CA%032x", i), From: "+14155550123", To: "+18005550199"}
		hooks[i] = twiliosim.SignWebhook(authToken, action, call.Params(url.Values{"Digits": {"1"}}))
	}
	var next atomic.Int64
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b.SetParallelism(16) // many webhooks at once, as in a burst
	b.ReportAllocs()
	b.ResetTimer()
	before := cpu()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w := &twiliosim.Answer{}
			handler.ServeHTTP(w, hooks[next.Add(1)-1].Request(path))
			if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "<Redirect") {
				b.Errorf("not a hold: %d %s", w.Code, w.Body.String())
			}
		}
	})
	used := cpu() - before
	b.StopTimer()
	// CPU, not wall time: a refused webhook's wait for a slot costs none.
	b.ReportMetric(float64(used.Nanoseconds())/float64(b.N)/1000, "cpu-µs/op")
}
