package relay

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/relay/relaysqlite"
)

// env is a store, its relay and a catch hook, wired as `serve` wires them.
type env struct {
	store   consent.Store
	relay   *Relay
	keyring *pii.Keyring
	clock   *fakeClock
	hook    *catchHook
	signer  *Signer
	logs    *syncWriter
	// exec runs raw SQL against the database (for tamper tests).
	exec func(ctx context.Context, q string) error
}

type envOpts struct {
	respond func(n int, w http.ResponseWriter, r *http.Request, body []byte)
	pii     PIIMode
	metrics *telemetry.Metrics
	rate    float64 // Config.RateLimit
}

func testConfig(t *testing.T, k *pii.Keyring, clock *fakeClock, hook *catchHook, o envOpts) (Config, *syncWriter) {
	signer, _ := ParseSigningSecret(vecSecret)
	key, _ := pii.NewPseudonymKey()
	logs := &syncWriter{b: &strings.Builder{}}
	b := DefaultBackoff()
	b.Rand = func() float64 { return 0 } // deterministic: the minimum delay
	return Config{
		Keyring:       k,
		Pseudonymizer: pii.NewPseudonymizer(key),
		PII:           o.pii,
		WebhookURL:    hook.URL + "/hooks/catch/1/abc/",
		Signer:        signer,
		Backoff:       b,
		PollInterval:  20 * time.Millisecond,
		RateLimit:     o.rate,
		Now:           clock.Now,
		Logger:        slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics:       o.metrics,
	}, logs
}

func newSQLiteEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	ctx := context.Background()
	k := keyring(t, hexA, "")
	// The clock starts at the real time: River refuses retry times in its
	// own past, and it is the clock, not sleeping, that the tests move.
	clock := &fakeClock{t: time.Now().UTC()}
	if o.respond == nil {
		o.respond = func(int, http.ResponseWriter, *http.Request, []byte) {}
	}
	hook := newCatchHook(t, o.respond)
	cfg, logs := testConfig(t, k, clock, hook, o)
	outbox, err := NewOutbox(relaysqlite.New(nil), k, true)
	if err != nil {
		t.Fatal(err)
	}
	store, err := sqlitestore.Open(ctx, t.TempDir(), sqlitestore.Options{Migrate: true, Outbox: outbox})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if err := relaysqlite.Migrate(ctx, store.DB()); err != nil {
		t.Fatal(err)
	}
	r, err := New(relaysqlite.New(store.DB()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := store.DB()
	return &env{store: store, relay: r, keyring: k, clock: clock, hook: hook, signer: cfg.Signer, logs: logs,
		exec: func(ctx context.Context, q string) error { _, err := db.ExecContext(ctx, q); return err }}
}

func (e *env) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.relay.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = e.relay.Stop(sctx)
		cancel()
	})
}

// waitState polls (it does not sleep out a backoff: the states it waits for
// are reached as soon as a worker picks the job up) until the event's latest
// delivery is in state.
func (e *env) waitState(t *testing.T, eventID, state string) Delivery {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var last []Delivery
	for time.Now().Before(deadline) {
		ds, err := e.relay.Deliveries(context.Background(), eventID)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) > 0 && ds[len(ds)-1].State == state {
			return ds[len(ds)-1]
		}
		last = ds
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("event %s: deliveries %+v never reached %s", eventID, last, state)
	return Delivery{}
}

func TestSQLiteOutboxDeliversSignedAuditedEvent(t *testing.T) {
	e := newSQLiteEnv(t, envOpts{respond: func(int, http.ResponseWriter, *http.Request, []byte) {}})
	runDeliversSignedAuditedEvent(t, e)
}

func runDeliversSignedAuditedEvent(t *testing.T, e *env) {
	ctx := context.Background()
	rec := record(t, e.keyring, "rec_ok", "CA_OK")
	stored, created, err := e.store.Record(ctx, rec)
	if err != nil || !created {
		t.Fatalf("Record: %v %v", created, err)
	}
	entry, err := e.relay.Event(ctx, stored.ID)
	if err != nil {
		t.Fatal(err)
	}
	if entry.Seq != 1 || entry.Type != TypeConsentGranted || entry.PrevHash != GenesisHash {
		t.Fatalf("audit entry %+v", entry)
	}
	if ds, _ := e.relay.Deliveries(ctx, stored.ID); len(ds) != 1 || ds[0].State != "available" {
		t.Fatalf("delivery job not queued with the record: %+v", ds)
	}
	// A second Record for the same call finds the first: no second entry or job.
	if _, created, _ := e.store.Record(ctx, record(t, e.keyring, "rec_dup", "CA_OK")); created {
		t.Fatal("duplicate created")
	}

	e.start(t)
	d := e.waitState(t, stored.ID, "completed")
	if d.Attempt != 1 {
		t.Fatalf("delivered after %d attempts", d.Attempt)
	}
	got := <-e.hook.received
	if string(got.body) != string(entry.Event) {
		t.Fatalf("posted body differs from the audited event:\n%s\n%s", got.body, entry.Event)
	}
	if err := e.signer.Verify(got.header, got.body, e.clock.Now(), DefaultTolerance); err != nil {
		t.Fatal(err)
	}
	if got.header.Get(HeaderID) != stored.ID {
		t.Fatalf("webhook-id %q", got.header.Get(HeaderID))
	}
	res, err := e.relay.VerifyAudit(ctx)
	if err != nil || res.Entries != 1 {
		t.Fatalf("verify: %+v %v", res, err)
	}
	for _, phi := range []string{"8675309", "5551212", "agree"} {
		if strings.Contains(e.logs.String(), phi) {
			t.Fatalf("logs contain PHI %q", phi)
		}
	}
}

func TestSQLiteRetryDeadLetterReplay(t *testing.T) {
	e := newSQLiteEnv(t, envOpts{})
	runRetryDeadLetterReplay(t, e)
}

func runRetryDeadLetterReplay(t *testing.T, e *env) {
	ctx := context.Background()
	// Event 1 meets a 503, event 2 a 422; at the end event 3 a 503 with
	// Retry-After 120 (which holds back the whole hook, so it comes last).
	var mu sync.Mutex
	byID := map[string]int{}
	e.hook.respond = func(n int, w http.ResponseWriter, r *http.Request, body []byte) {
		id := r.Header.Get(HeaderID)
		mu.Lock()
		byID[id]++
		nth := byID[id]
		mu.Unlock()
		switch {
		case id == "rec_retry" && nth == 1:
			w.WriteHeader(503)
		case id == "rec_later" && nth == 1:
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(503)
		case id == "rec_dead" && nth == 1:
			w.WriteHeader(422)
			_, _ = w.Write(body) // an echo must not reach errors or logs
		}
	}
	for _, id := range []string{"rec_retry", "rec_dead"} {
		if _, _, err := e.store.Record(ctx, record(t, e.keyring, id, "CA_"+id)); err != nil {
			t.Fatal(err)
		}
	}
	e.start(t)

	d := e.waitState(t, "rec_retry", "retryable")
	// The first backoff step: 15 s (the minimum, Rand 0).
	if want := e.clock.Now().Add(DefaultBackoff().MinDelay(1)); d.NextAt.Before(want.Add(-time.Millisecond)) {
		t.Errorf("next attempt at %s, want %s or later", d.NextAt, want)
	}
	if !strings.Contains(d.LastError, "503") || d.MaxAttempts != DefaultBackoff().MaxAttempts() {
		t.Errorf("retryable delivery %+v", d)
	}
	dead := e.waitState(t, "rec_dead", "cancelled")
	if dead.Attempt != 1 || !strings.Contains(dead.LastError, "422") {
		t.Errorf("dead letter %+v", dead)
	}

	failed, err := e.relay.ListFailed(ctx, 10)
	if err != nil || len(failed) != 2 {
		t.Fatalf("ListFailed: %+v %v", failed, err)
	}
	for _, f := range failed {
		for _, phi := range []string{"eyJ", "8675309", "agree"} {
			if strings.Contains(f.LastError, phi) {
				t.Fatalf("failure record leaks %q: %s", phi, f.LastError)
			}
		}
	}
	if _, err := e.relay.Replay(ctx, "rec_retry"); !errors.Is(err, ErrAlreadyQueued) {
		t.Fatalf("replay of a queued event: %v", err)
	}
	if _, err := e.relay.Replay(ctx, "nope"); !errors.Is(err, ErrEventNotFound) {
		t.Fatalf("replay of unknown event: %v", err)
	}
	if _, err := e.relay.Replay(ctx, "rec_dead"); err != nil {
		t.Fatal(err)
	}
	e.waitState(t, "rec_dead", "completed")
	if ds, _ := e.relay.Deliveries(ctx, "rec_dead"); len(ds) != 2 || ds[0].State != "cancelled" {
		t.Fatalf("replay history %+v", ds)
	}
	// Replayed and delivered: no longer listed as failed.
	if failed, _ := e.relay.ListFailed(ctx, 10); len(failed) != 1 || failed[0].EventID != "rec_retry" {
		t.Fatalf("ListFailed after replay: %+v", failed)
	}
	if _, _, err := e.store.Record(ctx, record(t, e.keyring, "rec_later", "CA_rec_later")); err != nil {
		t.Fatal(err)
	}
	// Retry-After is a snooze: scheduled 2 minutes on (River's clock is the
	// real one here, ahead of the test's unmoved clock), no attempt used,
	// no error recorded.
	asked := time.Now()
	later := e.waitState(t, "rec_later", "scheduled")
	if later.NextAt.Before(asked.Add(2*time.Minute-time.Second)) || later.NextAt.After(time.Now().Add(2*time.Minute)) || later.Attempt != 0 || later.LastError != "" {
		t.Errorf("snoozed delivery %+v, want scheduled 2 minutes after %s, attempt 0, no error", later, asked)
	}
	for _, phi := range []string{"8675309", "5551212", "agree", "eyJ"} {
		if strings.Contains(e.logs.String(), phi) {
			t.Fatalf("logs contain %q", phi)
		}
	}
}

func TestSQLiteHookFailureRollsBackRecord(t *testing.T) {
	ctx := context.Background()
	// The record's PII was sealed under a key this outbox can't open: the
	// event can't be built, so the record must not be stored either.
	outbox, _ := NewOutbox(relaysqlite.New(nil), keyring(t, hexB, ""), true)
	store, err := sqlitestore.Open(ctx, t.TempDir(), sqlitestore.Options{Migrate: true, Outbox: outbox})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := relaysqlite.Migrate(ctx, store.DB()); err != nil {
		t.Fatal(err)
	}
	_, _, err = store.Record(ctx, record(t, keyring(t, hexA, ""), "rec_x", "CA_X"))
	if err == nil || strings.Contains(err.Error(), "8675309") {
		t.Fatalf("Record: %v", err)
	}
	if _, err := store.Get(ctx, "CA_X", "hipaa-consent"); !errors.Is(err, consent.ErrNotFound) {
		t.Fatalf("record stored despite failed hook: %v", err)
	}
	var n int
	_ = store.DB().QueryRowContext(ctx, `SELECT count(*) FROM relay_audit`).Scan(&n)
	var jobs int
	_ = store.DB().QueryRowContext(ctx, `SELECT count(*) FROM river_job`).Scan(&jobs)
	if n != 0 || jobs != 0 {
		t.Fatalf("audit rows %d, jobs %d after rollback", n, jobs)
	}
}

func TestSQLiteAuditAppendOnlyAndVerify(t *testing.T) {
	e := newSQLiteEnv(t, envOpts{})
	ctx := context.Background()
	for _, id := range []string{"a1", "a2", "a3"} {
		if _, _, err := e.store.Record(ctx, record(t, e.keyring, id, "CA"+id)); err != nil {
			t.Fatal(err)
		}
	}
	ev, created, err := e.relay.RecordCallCompleted(ctx, CallCompleted{CallSID: "CAa1", From: "+14158675309", To: "+18005551212", At: e.clock.Now()})
	if err != nil || !created {
		t.Fatal(err)
	}
	if _, created, _ := e.relay.RecordCallCompleted(ctx, CallCompleted{CallSID: "CAa1", At: e.clock.Now()}); created {
		t.Fatal("repeated status callback created a second event")
	}
	if ds, _ := e.relay.Deliveries(ctx, ev.ID); len(ds) != 1 {
		t.Fatalf("call.completed deliveries %+v", ds)
	}
	res, err := e.relay.VerifyAudit(ctx)
	if err != nil || res.Entries != 4 {
		t.Fatalf("verify %+v %v", res, err)
	}
	// The call's call.completed event follows its consent event in the
	// call's chain.
	a1, _ := e.relay.Event(ctx, "a1")
	cc, _ := e.relay.Event(ctx, ev.ID)
	if a1.Chain != ChainOf("CAa1") || cc.Chain != a1.Chain || cc.Seq <= a1.Seq {
		t.Fatalf("consent at %d/%d, call.completed at %d/%d", a1.Chain, a1.Seq, cc.Chain, cc.Seq)
	}
	for _, q := range []string{`UPDATE relay_audit SET type = 'consent.declined' WHERE event_id = 'a2'`, `DELETE FROM relay_audit WHERE event_id = '` + ev.ID + `'`, `DELETE FROM relay_audit`} {
		if err := e.exec(ctx, q); err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// Someone with the file drops the guard and edits an entry: verify
	// names the entry.
	if err := e.exec(ctx, `DROP TRIGGER relay_audit_no_update`); err != nil {
		t.Fatal(err)
	}
	if err := e.exec(ctx, `UPDATE relay_audit SET event = replace(event, 'consent.granted', 'consent.declined'), type = 'consent.declined' WHERE event_id = 'a2'`); err != nil {
		t.Fatal(err)
	}
	a2, _ := e.relay.Event(ctx, "a2")
	_, err = e.relay.VerifyAudit(ctx)
	var ce *ChainError
	if !errors.As(err, &ce) || ce.Chain != a2.Chain || ce.Seq != a2.Seq || ce.EventID != "a2" {
		t.Fatalf("tampered chain: %v, want chain %d seq %d event a2", err, a2.Chain, a2.Seq)
	}
}

// syncWriter makes a strings.Builder safe for the logger's goroutines.
type syncWriter struct {
	mu muLocker
	b  *strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

var _ io.Writer = (*syncWriter)(nil)
var _ = sql.ErrNoRows

// BenchmarkSQLiteRecordWithOutbox measures Record with the outbox hook: the
// consent insert, the audit append and the River job insert in one
// transaction.
func BenchmarkSQLiteRecordWithOutbox(b *testing.B) {
	ctx := context.Background()
	k := keyring(b, hexA, "")
	outbox, _ := NewOutbox(relaysqlite.New(nil), k, true)
	store, err := sqlitestore.Open(ctx, b.TempDir(), sqlitestore.Options{Migrate: true, Outbox: outbox})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	if err := relaysqlite.Migrate(ctx, store.DB()); err != nil {
		b.Fatal(err)
	}
	rec := record(b, k, "", "")
	i := 0
	for b.Loop() {
		i++
		rec.ID, rec.CallSID = "", "CA"+strconv.Itoa(i)
		if _, _, err := store.Record(ctx, rec); err != nil {
			b.Fatal(err)
		}
	}
}

func TestSQLiteUndecidedCallCarriesCallCompleted(t *testing.T) {
	runUndecidedCallCarriesCallCompleted(t, newSQLiteEnv(t, envOpts{}))
}

// A call that ended undecided: its status callback's no_response record
// brings the call.completed event into its own transaction, numbers
// re-sealed for the event, each event with its delivery job; the relay's
// own call.completed for the same call (a status callback sent again) then
// finds it there and adds nothing.
func runUndecidedCallCarriesCallCompleted(t *testing.T, e *env) {
	ctx := context.Background()
	rec := record(t, e.keyring, "rec_nr", "CA_NR")
	rec.Decision, rec.Source, rec.Confidence = consent.NoResponse, consent.SourceStatusCallback, nil
	if !EndsCall(rec) {
		t.Fatal("a status callback's no_response does not end its call")
	}
	if _, created, err := e.store.Record(ctx, rec); err != nil || !created {
		t.Fatalf("Record: %v %v", created, err)
	}
	id := CallCompletedEventID("CA_NR")
	cc, err := e.relay.Event(ctx, id)
	if err != nil {
		t.Fatalf("call.completed not written with the record: %v", err)
	}
	nr, err := e.relay.Event(ctx, "rec_nr")
	if err != nil {
		t.Fatal(err)
	}
	if cc.Type != TypeCallCompleted || nr.Type != TypeConsentNoResponse || cc.Seq != nr.Seq+1 || cc.PrevHash != nr.Hash {
		t.Fatalf("entries: no_response %+v, call.completed %+v", nr, cc)
	}
	var ev Event
	if err := json.Unmarshal(cc.Event, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.PatientRef != rec.PatientRef || ev.OccurredAt != formatTime(rec.DecidedAt) || ev.Source != consent.SourceStatusCallback {
		t.Fatalf("call.completed event %+v", ev)
	}
	if from, err := e.keyring.OpenFor(ValueBinding(ev, consent.FieldFrom), ev.From); err != nil || from != "+14158675309" {
		t.Fatalf("call.completed from: %q, %v", from, err)
	}
	for _, id := range []string{"rec_nr", id} {
		if ds, _ := e.relay.Deliveries(ctx, id); len(ds) != 1 {
			t.Fatalf("%s: delivery jobs %+v, want 1", id, ds)
		}
	}
	if _, created, err := e.relay.RecordCallCompleted(ctx, CallCompleted{CallSID: "CA_NR", From: "+14158675309", At: time.Now()}); err != nil || created {
		t.Fatalf("call.completed again: created %v, %v", created, err)
	}
	if ds, _ := e.relay.Deliveries(ctx, id); len(ds) != 1 {
		t.Fatalf("delivery jobs after a repeat: %+v", ds)
	}
	if res, err := e.relay.VerifyAudit(ctx); err != nil || res.Entries != 2 {
		t.Fatalf("verify: %+v %v", res, err)
	}

	// The other order: the call's call.completed is in the log (and
	// queued) before its no_response is recorded. The record and its own
	// event are written with one delivery job; the call.completed is not
	// appended or queued a second time.
	if _, created, err := e.relay.RecordCallCompleted(ctx, CallCompleted{CallSID: "CA_NR2", From: "+14158675309", At: time.Now()}); err != nil || !created {
		t.Fatalf("call.completed first: created %v, %v", created, err)
	}
	rec2 := record(t, e.keyring, "rec_nr2", "CA_NR2")
	rec2.Decision, rec2.Source, rec2.Confidence = consent.NoResponse, consent.SourceStatusCallback, nil
	if _, created, err := e.store.Record(ctx, rec2); err != nil || !created {
		t.Fatalf("Record after call.completed: %v %v", created, err)
	}
	for _, id := range []string{"rec_nr2", CallCompletedEventID("CA_NR2")} {
		if ds, _ := e.relay.Deliveries(ctx, id); len(ds) != 1 {
			t.Fatalf("%s: delivery jobs %+v, want 1", id, ds)
		}
	}
	if res, err := e.relay.VerifyAudit(ctx); err != nil || res.Entries != 4 {
		t.Fatalf("verify: %+v %v", res, err)
	}
}
