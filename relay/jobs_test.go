package relay

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/pii/piitest"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// TestWorkerRetriesForADayOnDrivenClock runs the delivery worker through a
// whole outage, attempt by attempt, moving the injected clock to each
// NextRetry instead of sleeping: the retries must span at least 24 hours
// before the job is given up, and Retry-After must be honoured on the way.
func TestWorkerRetriesForADayOnDrivenClock(t *testing.T) {
	e := newSQLiteEnv(t, envOpts{})
	ctx := context.Background()
	if _, _, err := e.store.Record(ctx, record(t, e.keyring, "rec_outage", "CA_OUT")); err != nil {
		t.Fatal(err)
	}
	e.hook.respond = func(n int, w http.ResponseWriter, r *http.Request, body []byte) {
		if n == 3 {
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(429)
			return
		}
		w.WriteHeader(502)
	}
	w := &deliverWorker{r: e.relay}
	start := e.clock.Now()
	job := &river.Job[DeliverArgs]{
		JobRow: &rivertype.JobRow{ID: 1, MaxAttempts: MaxDeliveryAttempts(), Kind: DeliverKind},
		Args:   DeliverArgs{EventID: "rec_outage"},
	}
	for attempt := 1; attempt <= job.MaxAttempts; attempt++ {
		job.Attempt = attempt
		err := w.Work(ctx, job)
		if err == nil {
			t.Fatal("delivered during the outage")
		}
		var cancel *river.JobCancelError
		if errors.As(err, &cancel) {
			t.Fatalf("attempt %d dead-lettered a retryable failure: %v", attempt, err)
		}
		if attempt == job.MaxAttempts {
			break // River discards the job here
		}
		next := w.NextRetry(job)
		if attempt == 3 && next.Sub(e.clock.Now()) != time.Hour {
			t.Fatalf("Retry-After 3600 gave a wait of %s", next.Sub(e.clock.Now()))
		}
		if !next.After(e.clock.Now()) {
			t.Fatalf("attempt %d: next retry %s not in the future", attempt, next)
		}
		job.Errors = append(job.Errors, rivertype.AttemptError{At: e.clock.Now(), Attempt: attempt, Error: err.Error()})
		e.clock.Advance(next.Sub(e.clock.Now()))
	}
	if span := e.clock.Now().Sub(start); span < 24*time.Hour {
		t.Fatalf("gave up after %s", span)
	} else {
		t.Logf("%d attempts over %s", job.MaxAttempts, span)
	}
	if got := int(e.hook.calls.Load()); got != job.MaxAttempts {
		t.Fatalf("hook saw %d attempts, want %d", got, job.MaxAttempts)
	}
}

func TestWorkerDeadLettersMissingEvent(t *testing.T) {
	e := newSQLiteEnv(t, envOpts{})
	w := &deliverWorker{r: e.relay}
	err := w.Work(context.Background(), &river.Job[DeliverArgs]{JobRow: &rivertype.JobRow{ID: 9, Attempt: 1, MaxAttempts: 3}, Args: DeliverArgs{EventID: "ghost"}})
	var cancel *river.JobCancelError
	if !errors.As(err, &cancel) || !errors.Is(err, ErrEventNotFound) {
		t.Fatalf("missing event: %v", err)
	}
}

func TestWorkerOmitModeSendsNoPII(t *testing.T) {
	e := newSQLiteEnv(t, envOpts{pii: PIIOmit})
	ctx := context.Background()
	if _, _, err := e.store.Record(ctx, record(t, e.keyring, "rec_omit", "CA_OMIT")); err != nil {
		t.Fatal(err)
	}
	w := &deliverWorker{r: e.relay}
	if err := w.Work(ctx, &river.Job[DeliverArgs]{JobRow: &rivertype.JobRow{ID: 2, Attempt: 1, MaxAttempts: 3}, Args: DeliverArgs{EventID: "rec_omit"}}); err != nil {
		t.Fatal(err)
	}
	got := <-e.hook.received
	for _, f := range []string{`"from"`, `"to"`, `"transcript"`, "eyJ"} {
		if strings.Contains(string(got.body), f) {
			t.Fatalf("omit mode body has %s: %s", f, got.body)
		}
	}
	if err := e.signer.Verify(got.header, got.body, e.clock.Now(), DefaultTolerance); err != nil {
		t.Fatal(err)
	}
	// The audit log still keeps the sealed PII.
	entry, _ := e.relay.Event(ctx, "rec_omit")
	if !strings.Contains(string(entry.Event), `"from":"eyJ`) {
		t.Fatal("audit entry lost its sealed PII")
	}
}

func TestDecrypt(t *testing.T) {
	k := keyring(t, hexB, hexA)
	rec := record(t, keyring(t, hexA, ""), "r", "CA")
	if pt, err := Decrypt(k, string(rec.From)); err != nil || pt != "+14158675309" {
		t.Fatalf("value: %q %v", pt, err)
	}
	ev, _ := NewConsentEvent(rec, k)
	body, _ := ev.Body(PIIEncrypted)
	out, err := Decrypt(k, string(body))
	if err != nil || !strings.Contains(out, `"transcript": "yes I agree"`) || !strings.Contains(out, `"to": "+18005551212"`) {
		t.Fatalf("event: %s %v", out, err)
	}
	// A bound value opens on its own, by its own header.
	if pt, err := Decrypt(k, string(ev.To)); err != nil || pt != "+18005551212" {
		t.Fatalf("event value: %q %v", pt, err)
	}
	// A whole event checks each value's binding against the event: values
	// swapped inside it, or pasted in from another event, fail naming the
	// field, never the value.
	other, _ := NewConsentEvent(record(t, k, "r2", "CA2"), k)
	completed, _ := NewCallCompletedEvent(CallCompleted{CallSID: "CA", From: "+14158675309"}, k, pii.NewPseudonymizer(make([]byte, 32)))
	for name, tamper := range map[string]func(e *Event){
		"swapped":                   func(e *Event) { e.From, e.To = e.To, e.From },
		"from another call's event": func(e *Event) { e.Transcript = other.Transcript },
		"from call.completed":       func(e *Event) { e.From = completed.From },
	} {
		e := ev
		tamper(&e)
		b, _ := e.Body(PIIEncrypted)
		_, err := Decrypt(k, string(b))
		if !errors.Is(err, pii.ErrWrongPlace) || strings.Contains(err.Error(), "8675309") || strings.Contains(err.Error(), "5551212") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Events stored before bindings existed (legacy values) still open.
	legacy := ev
	legacy.From = piitest.LegacySeal(t, hexA, "+14158675309") // a retired key, too
	b, _ := legacy.Body(PIIEncrypted)
	if out, err := Decrypt(k, string(b)); err != nil || !strings.Contains(out, `"from": "+14158675309"`) {
		t.Fatalf("legacy event: %s %v", out, err)
	}
	if _, err := Decrypt(keyring(t, hexB, ""), string(rec.From)); err == nil {
		t.Fatal("opened without the key")
	}
}

// A job River's rescuer hands back (left running by a process that died)
// was not failed by the receiver: it is retried at once, not after a
// backoff step. A job this process worked and saw fail backs off.
func TestWorkerRetriesRescuedJobAtOnce(t *testing.T) {
	e := newSQLiteEnv(t, envOpts{respond: func(_ int, w http.ResponseWriter, _ *http.Request, _ []byte) { w.WriteHeader(503) }})
	ctx := context.Background()
	if _, _, err := e.store.Record(ctx, record(t, e.keyring, "rec_rescue", "CA_RESCUE")); err != nil {
		t.Fatal(err)
	}
	w := &deliverWorker{r: e.relay}
	job := &river.Job[DeliverArgs]{
		JobRow: &rivertype.JobRow{ID: 7, Attempt: 1, MaxAttempts: MaxDeliveryAttempts(), Kind: DeliverKind},
		Args:   DeliverArgs{EventID: "rec_rescue"},
	}
	if next := w.NextRetry(job); !next.Equal(e.clock.Now()) {
		t.Fatalf("rescued job retried at %s, want now (%s)", next, e.clock.Now())
	}
	if err := w.Work(ctx, job); err == nil {
		t.Fatal("delivered during a 503")
	}
	if next := w.NextRetry(job); next.Sub(e.clock.Now()) < DefaultBackoff().MinDelay(1) {
		t.Fatalf("failed job retried after %s", next.Sub(e.clock.Now()))
	}
}

func TestRescueWindow(t *testing.T) {
	k := keyring(t, hexA, "")
	r, err := newRelay(Config{Keyring: k})
	if err != nil {
		t.Fatal(err)
	}
	c := r.riverConfig()
	if c.RescueStuckJobsAfter != 30*time.Second || c.JobTimeout != 15*time.Second {
		t.Fatalf("rescue after %s, job timeout %s; want 30s, 15s", c.RescueStuckJobsAfter, c.JobTimeout)
	}
	if _, err := newRelay(Config{Keyring: k, RescueAfter: 15 * time.Second}); err == nil {
		t.Fatal("a rescue window no longer than the job timeout was accepted")
	}
	r, err = newRelay(Config{Keyring: k, AttemptTimeout: time.Second, RescueAfter: 7 * time.Second})
	if err != nil || r.riverConfig().RescueStuckJobsAfter != 7*time.Second || r.riverConfig().JobTimeout != 6*time.Second {
		t.Fatalf("short attempts: %v", err)
	}
}
