package relay

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestClassifyResponse(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		status int
		ra     string
		out    DeliveryOutcome
		after  time.Duration
	}{
		{200, "", Delivered, 0}, {201, "", Delivered, 0}, {204, "", Delivered, 0},
		{500, "", Retry, 0}, {502, "", Retry, 0}, {503, "120", Retry, 2 * time.Minute},
		{408, "", Retry, 0}, {429, "7", Retry, 7 * time.Second},
		{429, "Sun, 01 Mar 2026 12:01:30 GMT", Retry, 90 * time.Second},
		{429, "Sun, 01 Mar 2026 11:00:00 GMT", Retry, 0}, // in the past
		{429, "soon", Retry, 0},
		{400, "", Dead, 0}, {401, "", Dead, 0}, {404, "", Dead, 0}, {410, "", Dead, 0}, {413, "", Dead, 0},
		{301, "", Dead, 0},
	}
	for _, c := range cases {
		h := http.Header{}
		if c.ra != "" {
			h.Set("Retry-After", c.ra)
		}
		out, after := ClassifyResponse(c.status, h, now)
		if out != c.out || after != c.after {
			t.Errorf("%d %q: got %v %v, want %v %v", c.status, c.ra, out, after, c.out, c.after)
		}
	}
}

// catchHook is a local stand-in for a Zapier Catch Hook.
type catchHook struct {
	*httptest.Server
	calls    atomic.Int32
	respond  func(n int, w http.ResponseWriter, r *http.Request, body []byte)
	received chan received
}

type received struct {
	header http.Header
	body   []byte
}

func newCatchHook(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request, body []byte)) *catchHook {
	h := &catchHook{respond: respond, received: make(chan received, 100)}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(h.calls.Add(1))
		body, _ := io.ReadAll(r.Body)
		select { // kept for tests that look; a burst must not block the hook
		case h.received <- received{r.Header.Clone(), body}:
		default:
		}
		h.respond(n, w, r, body)
	}))
	t.Cleanup(h.Close)
	return h
}

func TestDeliverSignsAndClassifies(t *testing.T) {
	signer, _ := ParseSigningSecret(vecSecret)
	clock := newClock()
	hook := newCatchHook(t, func(n int, w http.ResponseWriter, r *http.Request, body []byte) {
		switch n {
		case 1:
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(429)
		case 2:
			// A receiver echoing the request must not get it into errors.
			w.WriteHeader(500)
			_, _ = w.Write(body)
		case 3:
			w.WriteHeader(422)
			_, _ = w.Write(body)
		default:
			_, _ = io.WriteString(w, `{"status":"success"}`)
		}
	})
	z := &Zapier{URL: hook.URL + "/hooks/catch/123/abc/", Signer: signer, Now: clock.Now}
	body := []byte(`{"id":"rec_1","from":"eyJ.PHI-LOOKALIKE"}`)
	want := []struct {
		out    DeliveryOutcome
		status int
		after  time.Duration
	}{{Retry, 429, 30 * time.Second}, {Retry, 500, 0}, {Dead, 422, 0}, {Delivered, 200, 0}}
	var stamps []string
	for i, w := range want {
		a := z.Deliver(context.Background(), "rec_1", body)
		if a.Outcome != w.out || a.Status != w.status || a.RetryAfter != w.after {
			t.Fatalf("attempt %d: %+v", i+1, a)
		}
		if a.Err != nil && (strings.Contains(a.Err.Error(), "PHI") || strings.Contains(a.Err.Error(), "hooks/catch")) {
			t.Fatalf("error leaks body or URL: %v", a.Err)
		}
		got := <-hook.received
		if got.header.Get(HeaderID) != "rec_1" || got.header.Get("Content-Type") != "application/json" {
			t.Fatalf("headers: %v", got.header)
		}
		if err := signer.Verify(got.header, got.body, clock.Now(), DefaultTolerance); err != nil {
			t.Fatalf("attempt %d signature: %v", i+1, err)
		}
		stamps = append(stamps, got.header.Get(HeaderTimestamp))
		clock.Advance(time.Minute)
	}
	if stamps[0] == stamps[1] {
		t.Error("each attempt should carry a fresh timestamp")
	}
}

func TestDeliverTransportFailures(t *testing.T) {
	signer, _ := ParseSigningSecret(vecSecret)
	// Connection refused: a listener closed before use.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	z := &Zapier{URL: "http://" + addr + "/hooks/catch/secret-path/", Signer: signer}
	a := z.Deliver(context.Background(), "e", []byte(`{}`))
	if a.Outcome != Retry || a.Err == nil || strings.Contains(a.Err.Error(), "secret-path") {
		t.Fatalf("refused: %+v", a)
	}

	// Timeout: the hook never answers within the attempt timeout.
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer slow.Close()
	defer close(release)
	z = &Zapier{URL: slow.URL + "/secret-path", Signer: signer, Timeout: 50 * time.Millisecond}
	a = z.Deliver(context.Background(), "e", []byte(`{}`))
	if a.Outcome != Retry || !strings.Contains(a.Err.Error(), "did not answer within 50ms") || strings.Contains(a.Err.Error(), "secret-path") {
		t.Fatalf("timeout: %+v", a)
	}

	// A redirect is not followed (it would re-send PHI elsewhere): dead.
	redir := httptest.NewServer(http.RedirectHandler("http://127.0.0.1:1/elsewhere", http.StatusFound))
	defer redir.Close()
	z = &Zapier{URL: redir.URL, Signer: signer}
	if a = z.Deliver(context.Background(), "e", []byte(`{}`)); a.Outcome != Dead || a.Status != 302 {
		t.Fatalf("redirect: %+v", a)
	}
}

func TestBackoffSpansADay(t *testing.T) {
	b := DefaultBackoff()
	clock := newClock()
	b.Now = clock.Now
	n := b.MaxAttempts()
	if b.MinSpan() < 24*time.Hour {
		t.Fatalf("retries of %d attempts span only %s", n, b.MinSpan())
	}
	// Worst-case jitter (always the minimum) still spans 24 h; best case
	// (never the minimum) is bounded by twice that plus one cap.
	b.Rand = func() float64 { return 0 }
	var total time.Duration
	for i := 1; i < n; i++ {
		total += b.NextRetryAfter(i, 0).Sub(clock.Now())
	}
	if total < 24*time.Hour {
		t.Fatalf("minimum-jitter schedule spans %s", total)
	}
	b.Rand = func() float64 { return 0.999999 }
	total = 0
	for i := 1; i < n; i++ {
		total += b.NextRetryAfter(i, 0).Sub(clock.Now())
	}
	if total > 48*time.Hour+b.Cap {
		t.Fatalf("maximum-jitter schedule spans %s", total)
	}
	t.Logf("MaxAttempts=%d, retries span %s..%s", n, b.MinSpan(), total)

	// Exponential then capped.
	b.Rand = func() float64 { return 0 }
	if d := b.Delay(1); d != 15*time.Second {
		t.Errorf("Delay(1) = %s", d)
	}
	if d := b.Delay(2); d != 30*time.Second {
		t.Errorf("Delay(2) = %s", d)
	}
	if d := b.Delay(40); d != 30*time.Minute {
		t.Errorf("Delay(40) = %s", d)
	}
	// Retry-After is honoured when longer, bounded by MaxRetryAfter.
	if got := b.NextRetryAfter(1, 10*time.Minute).Sub(clock.Now()); got != 10*time.Minute {
		t.Errorf("Retry-After 10m -> %s", got)
	}
	if got := b.NextRetryAfter(1, 48*time.Hour).Sub(clock.Now()); got != b.MaxRetryAfter {
		t.Errorf("Retry-After 48h -> %s", got)
	}
	if got := b.NextRetryAfter(5, time.Second).Sub(clock.Now()); got != b.Delay(5) {
		t.Errorf("short Retry-After shortened the backoff: %s", got)
	}
	// Jitter actually varies.
	b.Rand = nil
	seen := map[time.Duration]bool{}
	for range 20 {
		seen[b.Delay(6)] = true
	}
	if len(seen) < 2 {
		t.Error("no jitter")
	}
}
