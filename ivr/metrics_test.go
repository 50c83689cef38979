package ivr_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/internal/telemetry/telemetrytest"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/twiml"
)

// gatedStore holds every Record until its gate opens (or the record's
// context ends), so a test can keep decision work in flight.
type gatedStore struct {
	*sqlitestore.Store
	mu   sync.Mutex
	gate chan struct{}
}

func (s *gatedStore) Record(ctx context.Context, rec consent.Record) (consent.Record, bool, error) {
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return consent.Record{}, false, ctx.Err()
		}
	}
	return s.Store.Record(ctx, rec)
}

func (s *gatedStore) setGate(g chan struct{}) {
	s.mu.Lock()
	s.gate = g
	s.mu.Unlock()
}

// The IVR's metrics move when their events happen: answers by kind,
// decisions, the three causes of a hold, admission refusals and the
// admission gauges, and the store's commits.
func TestMetricsMove(t *testing.T) {
	ctx := context.Background()
	m := telemetry.New()
	dir := t.TempDir()
	base, err := sqlitestore.Open(ctx, dir, sqlitestore.Options{Migrate: true, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	store := &gatedStore{Store: base}
	keys, err := pii.NewKeyring(testKey)
	if err != nil {
		t.Fatal(err)
	}
	pseudonyms, err := pii.LoadPseudonymizer(ctx, store, keys)
	if err != nil {
		t.Fatal(err)
	}
	svc := consent.NewService(consent.Config{
		Store: store, Locker: memlock.New(), Seal: keys.SealFor, Open: keys.OpenFor, PatientRef: pseudonyms.Ref, Metrics: m,
	})
	lib := twiml.Builtin()
	// Behind serve's access log, whose lines are checked below.
	var accessLines syncBuffer
	app := ivr.New(ivr.Config{
		PublicBaseURL: publicBase, AuthToken: authToken, AccountSID: accountSID, Scripts: lib, Consent: svc,
		Logger: slog.New(slog.DiscardHandler), Metrics: m,
		// One slot: a second decision while the first is held is refused
		// after AdmitWait; the first outlives its answer deadline.
		MaxInFlight: 1, MinInFlight: 1, AdmitWait: 20 * time.Millisecond,
		DecisionTimeout: 2 * time.Second, AnswerDeadline: 200 * time.Millisecond,
	})
	root := chi.NewRouter()
	root.Use(telemetry.RequestID, telemetry.AccessLog(slog.New(slog.NewJSONHandler(&accessLines, nil)), m))
	root.Mount("/", app.Router())
	srv := httptest.NewServer(root)
	t.Cleanup(func() { srv.Close(); _ = base.Close() })
	tw := &twiliosim.Twilio{PublicBaseURL: publicBase, Target: srv.URL, AuthToken: authToken, AccountSID: accountSID, HTTP: srv.Client()}
	h := &harness{t: t, twilio: tw}
	value := func(name string, labels ...string) float64 {
		return telemetrytest.Value(t, m, "consentline_"+name, labels...)
	}
	answers := func(kind string) float64 { return value("ivr_answers_total", "kind", kind) }

	// A clear answer: the disclosure, the read-back, one decision, one commit.
	c := h.call("metrics-granted")
	g := h.start(c)
	h.answer(c, g, url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.93"}})
	if answers(telemetry.AnswerTwiML) != 1 || answers(telemetry.AnswerReadBack) != 1 {
		t.Errorf("answers twiml %v, read_back %v; want 1, 1", answers(telemetry.AnswerTwiML), answers(telemetry.AnswerReadBack))
	}
	if got := value("decisions_total", "outcome", "granted", "source", "speech", "timing", "estimated"); got != 1 {
		t.Errorf("decisions granted/speech/estimated = %v, want 1", got)
	}
	if got := value("store_commit_batch_size", "queue", telemetry.CommitRecords); got < 1 {
		t.Errorf("record commits observed = %v, want at least 1", got)
	}
	// The same answer again (Twilio's retry) reads the decision back.
	h.answer(c, g, url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.93"}})
	if got := value("decisions_total"); got != 1 {
		t.Errorf("decisions after a retry = %v, want still 1", got)
	}
	if got := value("decision_conflicts_total"); got != 1 {
		t.Errorf("decision conflicts after a retry = %v, want 1", got)
	}

	// Speech without a confidence asks to confirm; an unclear one re-prompts.
	c2 := h.call("metrics-confirm")
	g2 := h.start(c2)
	h.answer(c2, g2, url.Values{"SpeechResult": {"yes I agree"}})
	h.answer(c2, g2, url.Values{"SpeechResult": {"purple monkey"}, "Confidence": {"0.9"}})
	if answers(telemetry.AnswerConfirm) != 1 || answers(telemetry.AnswerReprompt) != 1 {
		t.Errorf("answers confirm %v, reprompt %v; want 1, 1", answers(telemetry.AnswerConfirm), answers(telemetry.AnswerReprompt))
	}

	// Hold the store: the first decision outruns its answer deadline
	// (past_deadline), a second finds no slot (overloaded).
	gate := make(chan struct{})
	store.setGate(gate)
	c3, c4 := h.call("metrics-slow"), h.call("metrics-refused")
	g3, g4 := h.start(c3), h.start(c4)
	h.answer(c3, g3, url.Values{"Digits": {"1"}})
	if got := value("admission_in_flight"); got != 1 {
		t.Errorf("admission_in_flight while a decision is held = %v, want 1", got)
	}
	h.answer(c4, g4, url.Values{"Digits": {"2"}})
	close(gate)
	if got := value("ivr_holds_total", "cause", telemetry.HoldPastDeadline); got != 1 {
		t.Errorf("holds past_deadline = %v, want 1", got)
	}
	if got := value("ivr_holds_total", "cause", telemetry.HoldOverloaded); got != 1 {
		t.Errorf("holds overloaded = %v, want 1", got)
	}
	if got := value("admission_refused_total"); got != 1 {
		t.Errorf("admission refused = %v, want 1", got)
	}
	if got := value("admission_limit"); got != 1 {
		t.Errorf("admission_limit = %v, want 1 (its maximum)", got)
	}
	// The access log has the held decision's answer but not the refused
	// one's: refusals are logged once a second, counted (NoteShed).
	if n := countLines(accessLines.String(), `"route":"/voice/gather"`, c3.SID); n != 1 {
		t.Errorf("access lines for the gather past its deadline: %d, want 1", n)
	}
	if n := countLines(accessLines.String(), `"route":"/voice/gather"`, c4.SID); n != 0 {
		t.Errorf("access lines for the gather refused past capacity: %d, want 0", n)
	}
	if n := countLines(accessLines.String(), `"route":"/voice/incoming"`, c4.SID); n != 1 {
		t.Errorf("access lines for the refused call's incoming webhook: %d, want 1", n)
	}

	// A store that fails: an error hold.
	store.setGate(nil)
	c5 := h.call("metrics-error")
	g5 := h.start(c5)
	_ = base.Close()
	h.answer(c5, g5, url.Values{"Digits": {"1"}})
	if got := value("ivr_holds_total", "cause", telemetry.HoldError); got != 1 {
		t.Errorf("holds error = %v, want 1", got)
	}
	if got := answers(telemetry.AnswerHold); got != 3 {
		t.Errorf("hold answers = %v, want 3", got)
	}
}

// countLines returns how many lines of log contain every one of parts.
func countLines(log string, parts ...string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		all := line != ""
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}
