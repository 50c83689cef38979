package ivr_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

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
