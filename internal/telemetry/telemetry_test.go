package telemetry_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/internal/telemetry/telemetrytest"
)

// /metrics without a token is open; with one it wants exactly that bearer
// token and answers 401 to anything else.
func TestHandlerToken(t *testing.T) {
	m := telemetry.New()
	m.Answer(telemetry.AnswerHold)
	log := slog.New(slog.DiscardHandler)
	get := func(h http.Handler, auth string) (int, string) {
		req := httptest.NewRequest(http.MethodGet, telemetry.PathMetrics, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code, w.Body.String()
	}
	if code, body := get(telemetry.Handler(m, "", log), ""); code != http.StatusOK || !strings.Contains(body, `consentline_ivr_answers_total{kind="hold"} 1`) {
		t.Errorf("open /metrics: %d\n%.300s", code, body)
	}
	h := telemetry.Handler(m, "s3cret-token", log)
	for _, auth := range []string{"", "Bearer wrong", "Bearer s3cret-token ", "bearer s3cret-token", "Basic czNjcmV0LXRva2Vu", "s3cret-token"} {
		if code, body := get(h, auth); code != http.StatusUnauthorized || strings.Contains(body, "consentline_") {
			t.Errorf("Authorization %q: %d, want 401 and no metrics", auth, code)
		}
	}
	if code, body := get(h, "Bearer s3cret-token"); code != http.StatusOK || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_") {
		t.Errorf("with the token: %d, want 200 with Go runtime and process metrics\n%.300s", code, body)
	}
}

// A label value outside its fixed set is recorded as "other": nothing a
// caller says or dials can become a label.
func TestLabelsFromFixedSets(t *testing.T) {
	m := telemetry.New()
	m.Decision("granted", "+14155550123", "estimated")
	m.Hold("yes I agree")
	m.HTTPRequest("/voice/gather", 299, time.Millisecond)
	for name, labels := range map[string][]string{
		"consentline_decisions_total":               {"source", "other"},
		"consentline_ivr_holds_total":               {"cause", "other"},
		"consentline_http_request_duration_seconds": {"status", "other"},
	} {
		if got := telemetrytest.Value(t, m, name, labels...); got != 1 {
			t.Errorf("%s%v = %v, want 1", name, labels, got)
		}
	}
	var out bytes.Buffer
	families, _ := m.Registry().Gather()
	for _, f := range families {
		out.WriteString(f.String())
	}
	for _, phi := range []string{"4155550123", "agree"} {
		if strings.Contains(out.String(), phi) {
			t.Errorf("a metric carries %q", phi)
		}
	}
}

// Nothing panics on a nil *Metrics: tests that do not care pass none.
func TestNilMetrics(t *testing.T) {
	var m *telemetry.Metrics
	m.Answer(telemetry.AnswerHold)
	m.Decision("granted", "speech", "measured")
	m.StoreCommit(telemetry.CommitRecords, 3, time.Millisecond, nil)
	m.WatchAdmission(func() (int, int) { return 1, 1 })
	m.StreamOpened()
	m.VADOnset(telemetry.TrackInbound)
}

// router is a few routes served as serve serves the IVR's (Serve).
func router(log *slog.Logger, m *telemetry.Metrics) http.Handler {
	r := chi.NewRouter()
	r.Post("/voice/gather", func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		telemetry.NoteCallSID(r.Context(), r.PostForm.Get("CallSid"))
		w.Header().Set("Content-Type", "text/xml")
		_, _ = io.WriteString(w, "<Response/>")
	})
	r.Post("/voice/shed", func(w http.ResponseWriter, r *http.Request) {
		telemetry.NoteShed(r.Context())
		_, _ = io.WriteString(w, "<Response/>")
	})
	r.Post("/voice/panic", func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		panic("caller said " + r.PostForm.Get("SpeechResult"))
	})
	return telemetry.Serve(r, log, m, "")
}

func logLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", l)
		}
		lines = append(lines, m)
	}
	return lines
}

// One access line per request: method, route pattern (not the URL and its
// query), status, duration, request id and the call SID a handler noted —
// and no X-Request-Id the client made up; none for a request shed past
// capacity, which is still timed.
func TestAccessLog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	m := telemetry.New()
	srv := httptest.NewServer(router(log, m))
	defer srv.Close()

	form := "CallSid=CA0123456789abcdef0123456789abcdef&From=%2B14155550123&SpeechResult=yes+I+agree"
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/voice/gather?lang=en-US&from=%2B14155550123", strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Request-Id", "+14155550123")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if id := resp.Header.Get("X-Request-Id"); id == "" || strings.Contains(id, "4155550123") {
		t.Errorf("response X-Request-Id = %q, want a fresh id", id)
	}
	resp, err = http.Get(srv.URL + "/nowhere/%2B14155550123")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// A request shed past capacity has no line of its own, but is timed.
	resp, err = http.Post(srv.URL+"/voice/shed", "application/x-www-form-urlencoded", strings.NewReader(form))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	lines := logLines(t, &buf)
	if len(lines) != 2 {
		t.Fatalf("%d log lines, want 2:\n%s", len(lines), buf.String())
	}
	l := lines[0]
	for k, want := range map[string]any{"msg": "request", "method": "POST", "route": "/voice/gather", "status": float64(200),
		"call_sid": "CA0123456789abcdef0123456789abcdef", "bytes": float64(len("<Response/>"))} {
		if l[k] != want {
			t.Errorf("%s = %v, want %v", k, l[k], want)
		}
	}
	if id, _ := l["request_id"].(string); id == "" || id == "+14155550123" {
		t.Errorf("request_id = %q", id)
	}
	if _, ok := l["duration_ms"].(float64); !ok {
		t.Errorf("no duration_ms: %v", l)
	}
	if l := lines[1]; l["route"] != "unmatched" || l["status"] != float64(404) || l["call_sid"] != nil {
		t.Errorf("unmatched request logged as %v", l)
	}
	if strings.Contains(buf.String(), "4155550123") || strings.Contains(buf.String(), "agree") || strings.Contains(buf.String(), "lang=") {
		t.Errorf("the access log carries the request's values:\n%s", buf.String())
	}
	if got := telemetrytest.Value(t, m, "consentline_http_request_duration_seconds", "route", "/voice/gather", "status", "200"); got != 1 {
		t.Errorf("webhook latency observations = %v, want 1", got)
	}
	if got := telemetrytest.Value(t, m, "consentline_http_request_duration_seconds", "route", "unmatched", "status", "404"); got != 1 {
		t.Errorf("unmatched observations = %v, want 1", got)
	}
	if got := telemetrytest.Value(t, m, "consentline_http_request_duration_seconds", "route", "/voice/shed", "status", "200"); got != 1 {
		t.Errorf("shed observations = %v, want 1", got)
	}
}

// A panic answers 500 and logs one line with a stack, but not the panic's
// value nor anything of the request; the access line shows the 500.
func TestRecovererHidesRequestValues(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	srv := httptest.NewServer(router(log, nil))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/voice/panic", "application/x-www-form-urlencoded", strings.NewReader("SpeechResult=yes+I+agree+to+it"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("status %d, want 500", resp.StatusCode)
	}
	lines := logLines(t, &buf)
	if len(lines) != 2 || lines[0]["msg"] != "panic serving request" || lines[1]["status"] != float64(500) {
		t.Fatalf("want a panic line then a 500 access line:\n%s", buf.String())
	}
	if stack, _ := lines[0]["stack"].(string); !strings.Contains(stack, "telemetry_test.router") {
		t.Errorf("the panic line has no stack through the handler: %q", stack)
	}
	if strings.Contains(buf.String(), "agree") {
		t.Errorf("the panic's value reached the log:\n%s", buf.String())
	}
}
