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
// before the job is given up. A 429 with Retry-After on the way is a
// snooze of that long, which uses no attempt (River's JobSnooze).
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
		JobRow: &rivertype.JobRow{ID: 1, MaxAttempts: MaxDeliveryAttempts(), Kind: DeliverKind, CreatedAt: start},
		Args:   DeliverArgs{EventID: "rec_outage"},
	}
	snoozed := 0
	for attempt := 1; attempt <= job.MaxAttempts; attempt++ {
		job.Attempt = attempt
		now := e.clock.Now()
		job.AttemptedAt = &now
		err := w.Work(ctx, job)
		if err == nil {
			t.Fatal("delivered during the outage")
		}
		var cancel *river.JobCancelError
		if errors.As(err, &cancel) {
			t.Fatalf("attempt %d dead-lettered a retryable failure: %v", attempt, err)
		}
		var snooze *river.JobSnoozeError
		if errors.As(err, &snooze) {
			if snooze.Duration != time.Hour {
				t.Fatalf("Retry-After 3600 gave a snooze of %s", snooze.Duration)
			}
			snoozed++
			e.clock.Advance(snooze.Duration)
			attempt--                  // River gives a snoozed job its attempt back
			e.relay.pace = newPacer(0) // the hook-wide pause is on the real clock
			continue
		}
		if attempt == job.MaxAttempts {
			break // River discards the job here
		}
		next := w.NextRetry(job)
		if !next.After(e.clock.Now()) {
			t.Fatalf("attempt %d: next retry %s not in the future", attempt, next)
		}
		job.Errors = append(job.Errors, rivertype.AttemptError{At: e.clock.Now(), Attempt: attempt, Error: err.Error()})
		e.clock.Advance(next.Sub(e.clock.Now()))
	}
	if snoozed != 1 {
		t.Fatalf("%d snoozes, want 1 (the 429)", snoozed)
	}
	if span := e.clock.Now().Sub(start); span < 24*time.Hour {
		t.Fatalf("gave up after %s", span)
	} else {
		t.Logf("%d attempts and a snooze over %s", job.MaxAttempts, span)
	}
	if got := int(e.hook.calls.Load()); got != job.MaxAttempts+1 {
		t.Fatalf("hook saw %d requests, want %d attempts and the snoozed one", got, job.MaxAttempts)
	}
}

// A receiver's Retry-After (seconds or an HTTP date, 429 or 503) is a
// snooze, capped at MaxRetryAfter, and holds back every request to the
// hook; a Retry-After that never ends is given up on once the job is past
// the backoff's span and has been snoozed maxRetryAfterSnoozes times.
func TestWorkerSnoozesOnRetryAfter(t *testing.T) {
	e := newSQLiteEnv(t, envOpts{})
	ctx := context.Background()
	if _, _, err := e.store.Record(ctx, record(t, e.keyring, "rec_ra", "CA_RA")); err != nil {
		t.Fatal(err)
	}
	var status int
	var retryAfter string
	e.hook.respond = func(_ int, w http.ResponseWriter, _ *http.Request, _ []byte) {
		w.Header().Set("Retry-After", retryAfter)
		w.WriteHeader(status)
	}
	w := &deliverWorker{r: e.relay}
	job := func(meta string, created time.Time) *river.Job[DeliverArgs] {
		return &river.Job[DeliverArgs]{JobRow: &rivertype.JobRow{ID: 3, Attempt: 1, MaxAttempts: MaxDeliveryAttempts(),
			Metadata: []byte(meta), CreatedAt: created}, Args: DeliverArgs{EventID: "rec_ra"}}
	}
	for _, c := range []struct {
		status int
		ra     string
		want   time.Duration
	}{
		{429, "7", 7 * time.Second},
		{503, "120", 2 * time.Minute},
		{429, e.clock.Now().Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{503, "86400", time.Hour}, // capped
	} {
		status, retryAfter = c.status, c.ra
		e.relay.pace = newPacer(0)
		err := w.Work(ctx, job(`{}`, e.clock.Now()))
		var snooze *river.JobSnoozeError
		// (An HTTP date has whole seconds: up to 1 s less.)
		if !errors.As(err, &snooze) || snooze.Duration <= c.want-time.Second || snooze.Duration > c.want {
			t.Errorf("%d Retry-After %q: %v, want a snooze of %s", c.status, c.ra, err, c.want)
		}
		// The whole hook waits: the next delivery's turn is the snooze away.
		if d, _ := e.relay.pace.wait(ctx, MaxPaceWait); d < c.want-time.Second || d > c.want {
			t.Errorf("%d Retry-After %q: next turn in %s, want %s", c.status, c.ra, d, c.want)
		}
	}
	status, retryAfter = 429, "1"
	e.relay.pace = newPacer(0)
	var snooze *river.JobSnoozeError
	if err := w.Work(ctx, job(`{"snoozes":100}`, e.clock.Now().Add(-time.Hour))); !errors.As(err, &snooze) {
		t.Errorf("a young job snoozed 100 times: %v, want another snooze", err)
	}
	e.relay.pace = newPacer(0)
	err := w.Work(ctx, job(`{"snoozes":100}`, e.clock.Now().Add(-25*time.Hour)))
	var cancel *river.JobCancelError
	if !errors.As(err, &cancel) || !strings.Contains(err.Error(), "429") {
		t.Errorf("a day-old job snoozed 100 times: %v, want a dead letter", err)
	}
}

// A delivery cut off by the relay stopping is handed back (a snooze of 0),
// not counted as a failed attempt.
func TestWorkerHandsBackOnStop(t *testing.T) {
	hold := make(chan struct{})
	e := newSQLiteEnv(t, envOpts{respond: func(_ int, w http.ResponseWriter, r *http.Request, _ []byte) {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	}})
	defer close(hold)
	ctx, cancel := context.WithCancel(context.Background())
	if _, _, err := e.store.Record(ctx, record(t, e.keyring, "rec_stop", "CA_STOP")); err != nil {
		t.Fatal(err)
	}
	w := &deliverWorker{r: e.relay}
	go func() {
		<-e.hook.received
		cancel() // what River's StopAndCancel does to a running job
	}()
	err := w.Work(ctx, &river.Job[DeliverArgs]{JobRow: &rivertype.JobRow{ID: 4, Attempt: 1, MaxAttempts: 3}, Args: DeliverArgs{EventID: "rec_stop"}})
	var snooze *river.JobSnoozeError
	if !errors.As(err, &snooze) || snooze.Duration != 0 {
		t.Fatalf("cut off by stop: %v, want a snooze of 0", err)
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

// A job River's rescuer hands back (left running by a process that died,
// its attempt begun RescueAfter ago) was not failed by the receiver: it is retried at once, not after a
// backoff step. A job this process worked and saw fail backs off.
func TestWorkerRetriesRescuedJobAtOnce(t *testing.T) {
	e := newSQLiteEnv(t, envOpts{respond: func(_ int, w http.ResponseWriter, _ *http.Request, _ []byte) { w.WriteHeader(503) }})
	ctx := context.Background()
	if _, _, err := e.store.Record(ctx, record(t, e.keyring, "rec_rescue", "CA_RESCUE")); err != nil {
		t.Fatal(err)
	}
	w := &deliverWorker{r: e.relay}
	began := e.clock.Now().Add(-DefaultRescueAfter(0)) // as River's rescuer finds it
	job := &river.Job[DeliverArgs]{
		JobRow: &rivertype.JobRow{ID: 7, Attempt: 1, MaxAttempts: MaxDeliveryAttempts(), Kind: DeliverKind, AttemptedAt: &began},
		Args:   DeliverArgs{EventID: "rec_rescue"},
	}
	if next := w.NextRetry(job); !next.Equal(e.clock.Now()) {
		t.Fatalf("rescued job retried at %s, want now (%s)", next, e.clock.Now())
	}
	// The same job worked here: its attempt began just now.
	began = e.clock.Now()
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
