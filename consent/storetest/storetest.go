// Package storetest is the conformance suite every consent.Store
// implementation runs, so the SQLite and PostgreSQL stores are held to one
// behaviour: exactly one record per (call, script), first writer wins, times
// in UTC, and prompt failure once a context has ended.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
)

// Run runs the suite. open must return an empty, migrated store and arrange
// for it to be closed with t.Cleanup. Each subtest opens its own store, and
// uses call SIDs and secret names unique to it, so open may also hand out a
// shared store. Stores also run RunResealer, the key-rotation suite, which
// does need an empty store per subtest.
func Run(t *testing.T, open func(t *testing.T) consent.Store) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, open(t)) })
	t.Run("AssignsID", func(t *testing.T) { testAssignsID(t, open(t)) })
	t.Run("DuplicateReturnsFirst", func(t *testing.T) { testDuplicate(t, open(t)) })
	t.Run("ConcurrentSameCallAndScript", func(t *testing.T) { testConcurrentSame(t, open(t)) })
	t.Run("DistinctScriptsOneCall", func(t *testing.T) { testDistinctScripts(t, open(t)) })
	t.Run("GetNotFound", func(t *testing.T) { testGetNotFound(t, open(t)) })
	t.Run("RejectsInvalid", func(t *testing.T) { testRejectsInvalid(t, open(t)) })
	t.Run("SecretFirstWriterWins", func(t *testing.T) { testSecret(t, open(t)) })
	t.Run("SecretGenerateError", func(t *testing.T) { testSecretGenerateError(t, open(t)) })
	t.Run("ContextEnded", func(t *testing.T) { testContextEnded(t, open(t)) })
	t.Run("UnsettledCalls", func(t *testing.T) { testUnsettled(t, open(t)) })
	t.Run("StreamMeasurements", func(t *testing.T) { testStreamMeasurements(t, open(t)) })
	t.Run("Ping", func(t *testing.T) {
		if err := open(t).Ping(context.Background()); err != nil {
			t.Fatalf("Ping: %v", err)
		}
	})
}

// Sealed returns a value shaped like a JWE compact serialization (five
// base64url parts, empty encrypted key, as dir/A256GCM produces) carrying
// label. It is not encrypted: tests use it where a store only needs the shape.
func Sealed(label string) consent.Sealed {
	b64 := base64.RawURLEncoding.EncodeToString
	header := b64([]byte(`{"alg":"dir","enc":"A256GCM","kid":"test"}`))
	iv := make([]byte, 12)
	tag := make([]byte, 16)
	_, _ = rand.Read(iv)
	_, _ = rand.Read(tag)
	return consent.Sealed(header + ".." + b64(iv) + "." + b64([]byte(label)) + "." + b64(tag))
}

var seq atomic.Uint64

// CallSID returns a call SID unique to this process run (Twilio's format:
// "CA" and 32 hex digits).
func CallSID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return fmt.Sprintf("CA%s%016x", hex.EncodeToString(b), seq.Add(1))
}

// NewID returns a random record id.
func NewID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "rec_" + hex.EncodeToString(b)
}

// NewRecord returns a valid record with every field set, for callSID and the
// script scriptID. DecidedAt has sub-microsecond digits and a non-UTC zone
// on purpose, so stores must normalize it.
func NewRecord(callSID, scriptID string) consent.Record {
	conf := 0.875 // exactly representable, so it must round-trip exactly
	return consent.Record{
		ID:      NewID(),
		CallSID: callSID,
		Script: consent.ScriptRef{
			ID:       scriptID,
			Version:  "2024-06-01",
			Language: "en-US",
			SHA256:   strings.Repeat("ab", 32),
		},
		Decision:          consent.Granted,
		Source:            consent.SourceSpeech,
		Confidence:        &conf,
		BargeIn:           true,
		DisclosureHeardMS: 12345,
		// Not the columns' defaults, so a store that drops them fails.
		MustHearComplete: true,
		Timing:           consent.TimingMeasured,
		PatientRef:       "pr_" + hex.EncodeToString([]byte(callSID))[:16],
		From:             Sealed("from"),
		To:               Sealed("to"),
		Transcript:       Sealed("yes I agree"),
		DecidedAt:        time.Date(2025, 3, 9, 14, 30, 15, 123456789, time.FixedZone("EDT", -4*3600)),
	}
}

// AssertSameRecord fails unless got is want as a store must give it back:
// every field equal, DecidedAt in UTC and within a millisecond of want's.
func AssertSameRecord(t testing.TB, got, want consent.Record) {
	t.Helper()
	if got.DecidedAt.Location() != time.UTC {
		t.Errorf("DecidedAt location = %v, want UTC", got.DecidedAt.Location())
	}
	if d := got.DecidedAt.Sub(want.DecidedAt).Abs(); d >= time.Millisecond {
		// Stores may truncate or round below the millisecond, not more.
		t.Errorf("DecidedAt = %v, want %v (to the millisecond)", got.DecidedAt, want.DecidedAt.UTC())
	}
	switch {
	case got.Confidence == nil && want.Confidence != nil:
		t.Errorf("Confidence = nil, want %v", *want.Confidence)
	case got.Confidence != nil && want.Confidence == nil:
		t.Errorf("Confidence = %v, want nil", *got.Confidence)
	case got.Confidence != nil && *got.Confidence != *want.Confidence:
		t.Errorf("Confidence = %v, want %v", *got.Confidence, *want.Confidence)
	}
	g, w := got, want
	g.DecidedAt, w.DecidedAt = time.Time{}, time.Time{}
	g.Confidence, w.Confidence = nil, nil
	if g != w {
		t.Errorf("record differs:\n got  %+v\n want %+v", g, w)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustRecord(t *testing.T, s consent.Store, rec consent.Record) (consent.Record, bool) {
	t.Helper()
	got, created, err := s.Record(ctxT(t), rec)
	if err != nil {
		t.Fatalf("Record(%s, %s): %v", rec.CallSID, rec.Script.ID, err)
	}
	return got, created
}

func mustGet(t *testing.T, s consent.Store, callSID, scriptID string) consent.Record {
	t.Helper()
	got, err := s.Get(ctxT(t), callSID, scriptID)
	if err != nil {
		t.Fatalf("Get(%s, %s): %v", callSID, scriptID, err)
	}
	return got
}

func testRoundTrip(t *testing.T, s consent.Store) {
	withConf := NewRecord(CallSID(), "hipaa-consent")

	noConf := NewRecord(CallSID(), "hipaa-consent")
	noConf.Confidence = nil
	noConf.Decision = consent.NoResponse
	noConf.Source = consent.SourceStatusCallback
	noConf.BargeIn = false
	noConf.DisclosureHeardMS = 0
	noConf.From, noConf.To, noConf.Transcript = "", "", "" // absent PHI

	dtmf := NewRecord(CallSID(), "hipaa-consent")
	dtmf.Confidence = nil
	dtmf.Decision = consent.Declined
	dtmf.Source = consent.SourceDTMF
	dtmf.DecidedAt = time.Date(2025, 11, 2, 6, 0, 0, 0, time.UTC) // DST change day

	zero := 0.0 // a present zero must not read back as nil
	lowConf := NewRecord(CallSID(), "hipaa-consent")
	lowConf.Confidence = &zero

	for _, rec := range []consent.Record{withConf, noConf, dtmf, lowConf} {
		stored, created := mustRecord(t, s, rec)
		if !created {
			t.Fatalf("Record(%s) created = false on an empty store", rec.CallSID)
		}
		AssertSameRecord(t, stored, rec)
		got := mustGet(t, s, rec.CallSID, rec.Script.ID)
		AssertSameRecord(t, got, rec)
		// What Record returns is what Get returns, to the nanosecond: a
		// caller may relay either.
		if !got.DecidedAt.Equal(stored.DecidedAt) {
			t.Errorf("Get DecidedAt %v != Record's %v", got.DecidedAt, stored.DecidedAt)
		}
	}
}

func testAssignsID(t *testing.T, s consent.Store) {
	rec := NewRecord(CallSID(), "hipaa-consent")
	rec.ID = ""
	stored, created := mustRecord(t, s, rec)
	if !created || stored.ID == "" {
		t.Fatalf("Record without ID: created=%v id=%q, want a new id", created, stored.ID)
	}
	if got := mustGet(t, s, rec.CallSID, rec.Script.ID); got.ID != stored.ID {
		t.Fatalf("Get id %q, Record returned %q", got.ID, stored.ID)
	}
	other := NewRecord(CallSID(), "hipaa-consent")
	other.ID = ""
	if again, _ := mustRecord(t, s, other); again.ID == stored.ID {
		t.Fatalf("two records were given the same id %q", again.ID)
	}
}

func testDuplicate(t *testing.T, s consent.Store) {
	first := NewRecord(CallSID(), "hipaa-consent")
	if _, created := mustRecord(t, s, first); !created {
		t.Fatal("first Record: created = false")
	}
	// A later answer on the same call and script, e.g. a Twilio retry or a
	// DTMF press racing the speech result.
	second := NewRecord(first.CallSID, first.Script.ID)
	second.Decision = consent.Declined
	second.Source = consent.SourceDTMF
	second.Confidence = nil
	second.DecidedAt = first.DecidedAt.Add(time.Second)
	stored, created := mustRecord(t, s, second)
	if created {
		t.Fatal("duplicate Record: created = true")
	}
	AssertSameRecord(t, stored, first)
	AssertSameRecord(t, mustGet(t, s, first.CallSID, first.Script.ID), first)

	// Re-recording the very same record is a no-op too.
	if _, created := mustRecord(t, s, first); created {
		t.Fatal("identical Record again: created = true")
	}
}

func testConcurrentSame(t *testing.T, s consent.Store) {
	const n = 50
	callSID := CallSID()
	recs := make([]consent.Record, n)
	for i := range recs {
		recs[i] = NewRecord(callSID, "hipaa-consent")
		if i%2 == 1 {
			recs[i].Decision = consent.Declined
		}
	}
	type result struct {
		stored  consent.Record
		created bool
		err     error
	}
	results := make([]result, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	ctx := ctxT(t)
	for i := range n {
		wg.Go(func() {
			<-start // release all at once for the most contention
			var r result
			r.stored, r.created, r.err = s.Record(ctx, recs[i])
			results[i] = r
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("goroutine %d: Record: %v", i, r.err)
		}
		if r.created {
			if winner >= 0 {
				t.Fatalf("goroutines %d and %d both created the record", winner, i)
			}
			winner = i
		}
	}
	if winner < 0 {
		t.Fatal("no goroutine created the record")
	}
	for i, r := range results {
		if r.stored.ID != recs[winner].ID {
			t.Fatalf("goroutine %d got record %s, the winner stored %s", i, r.stored.ID, recs[winner].ID)
		}
		AssertSameRecord(t, r.stored, recs[winner])
	}
	AssertSameRecord(t, mustGet(t, s, callSID, "hipaa-consent"), recs[winner])
}

func testDistinctScripts(t *testing.T, s consent.Store) {
	callSID := CallSID()
	a := NewRecord(callSID, "hipaa-consent")
	b := NewRecord(callSID, "recording-consent")
	b.Decision = consent.Declined
	for _, rec := range []consent.Record{a, b} {
		if _, created := mustRecord(t, s, rec); !created {
			t.Fatalf("script %s on a call with another script: created = false", rec.Script.ID)
		}
	}
	AssertSameRecord(t, mustGet(t, s, callSID, a.Script.ID), a)
	AssertSameRecord(t, mustGet(t, s, callSID, b.Script.ID), b)

	// The same script on another call is its own record too.
	c := NewRecord(CallSID(), a.Script.ID)
	if _, created := mustRecord(t, s, c); !created {
		t.Fatal("same script on another call: created = false")
	}
}

func testGetNotFound(t *testing.T, s consent.Store) {
	callSID := CallSID()
	if _, err := s.Get(ctxT(t), callSID, "hipaa-consent"); !errors.Is(err, consent.ErrNotFound) {
		t.Fatalf("Get on an empty store: err = %v, want ErrNotFound", err)
	}
	mustRecord(t, s, NewRecord(callSID, "hipaa-consent"))
	if _, err := s.Get(ctxT(t), callSID, "other-script"); !errors.Is(err, consent.ErrNotFound) {
		t.Fatalf("Get of another script on a recorded call: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Get(ctxT(t), CallSID(), "hipaa-consent"); !errors.Is(err, consent.ErrNotFound) {
		t.Fatalf("Get of the script on another call: err = %v, want ErrNotFound", err)
	}
}

// testRejectsInvalid: a record the store cannot key, or whose PHI fields are
// not sealed, must never be written.
func testRejectsInvalid(t *testing.T, s consent.Store) {
	nan := math.NaN()
	tooSure := 1.5
	cases := map[string]func(*consent.Record){
		"no call SID":          func(r *consent.Record) { r.CallSID = "" },
		"no script id":         func(r *consent.Record) { r.Script.ID = "" },
		"unknown decision":     func(r *consent.Record) { r.Decision = "maybe" },
		"no decision time":     func(r *consent.Record) { r.DecidedAt = time.Time{} },
		"confidence above 1":   func(r *consent.Record) { r.Confidence = &tooSure },
		"confidence NaN":       func(r *consent.Record) { r.Confidence = &nan },
		"negative heard ms":    func(r *consent.Record) { r.DisclosureHeardMS = -1 },
		"timing unlabelled":    func(r *consent.Record) { r.Timing = "" },
		"timing unknown":       func(r *consent.Record) { r.Timing = "guessed" },
		"plaintext from":       func(r *consent.Record) { r.From = "+14155550100" },
		"plaintext to":         func(r *consent.Record) { r.To = "+18005550199" },
		"plaintext transcript": func(r *consent.Record) { r.Transcript = "yes. i agree. thanks. bye. ok" },
	}
	for name, mutate := range cases {
		rec := NewRecord(CallSID(), "hipaa-consent")
		mutate(&rec)
		if _, _, err := s.Record(ctxT(t), rec); err == nil {
			t.Errorf("%s: Record accepted it", name)
		}
		if rec.CallSID != "" && rec.Script.ID != "" {
			if _, err := s.Get(ctxT(t), rec.CallSID, rec.Script.ID); !errors.Is(err, consent.ErrNotFound) {
				t.Errorf("%s: after a rejected Record, Get err = %v, want ErrNotFound", name, err)
			}
		}
	}
}

func testSecret(t *testing.T, s consent.Store) {
	const n = 20
	name := "patient-ref-key-" + NewID()
	got := make([]consent.Sealed, n)
	generated := make([]consent.Sealed, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	ctx := ctxT(t)
	for i := range n {
		generated[i] = Sealed(fmt.Sprintf("secret-%d", i))
		wg.Go(func() {
			<-start
			v, err := s.Secret(ctx, name, func() (consent.Sealed, error) { return generated[i], nil })
			if err != nil {
				t.Errorf("goroutine %d: Secret: %v", i, err)
			}
			got[i] = v
		})
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}
	winner := got[0]
	known := false
	for _, g := range generated {
		known = known || g == winner
	}
	if !known {
		t.Fatalf("Secret returned %q, which no generate produced", winner)
	}
	for i, v := range got {
		if v != winner {
			t.Fatalf("goroutine %d saw secret %q, goroutine 0 saw %q", i, v, winner)
		}
	}
	// Once stored, generate is not consulted again.
	v, err := s.Secret(ctx, name, func() (consent.Sealed, error) {
		t.Error("generate called for a secret that exists")
		return Sealed("late"), nil
	})
	if err != nil || v != winner {
		t.Fatalf("Secret again = %q, %v; want %q", v, err, winner)
	}
	// Names are independent.
	other, err := s.Secret(ctx, name+"-other", func() (consent.Sealed, error) { return Sealed("other"), nil })
	if err != nil || other == winner {
		t.Fatalf("another name's Secret = %q, %v", other, err)
	}
}

func testSecretGenerateError(t *testing.T, s consent.Store) {
	name := "k-" + NewID()
	boom := errors.New("no entropy today")
	if _, err := s.Secret(ctxT(t), name, func() (consent.Sealed, error) { return "", boom }); !errors.Is(err, boom) {
		t.Fatalf("Secret with failing generate: err = %v, want it wrapped", err)
	}
	// Nothing was stored: the next caller's value wins.
	want := Sealed("next")
	if v, err := s.Secret(ctxT(t), name, func() (consent.Sealed, error) { return want, nil }); err != nil || v != want {
		t.Fatalf("Secret after a failed generate = %q, %v; want %q", v, err, want)
	}
	// A plaintext secret is refused like plaintext PHI.
	if _, err := s.Secret(ctxT(t), "k-"+NewID(), func() (consent.Sealed, error) { return "hunter2", nil }); err == nil {
		t.Fatal("Secret stored a value that is not sealed")
	}
}

// testContextEnded: once a context is canceled or past its deadline, every
// method fails at once with an error saying so, and Record writes nothing.
func testContextEnded(t *testing.T, s consent.Store) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()

	for _, c := range []struct {
		name string
		ctx  context.Context
		want error
	}{{"canceled", canceled, context.Canceled}, {"deadline", expired, context.DeadlineExceeded}} {
		rec := NewRecord(CallSID(), "hipaa-consent")
		ops := map[string]func() error{
			"Record": func() error { _, _, err := s.Record(c.ctx, rec); return err },
			"Get":    func() error { _, err := s.Get(c.ctx, rec.CallSID, rec.Script.ID); return err },
			"Secret": func() error {
				_, err := s.Secret(c.ctx, "k-"+NewID(), func() (consent.Sealed, error) { return Sealed("x"), nil })
				return err
			},
			"Ping": func() error { return s.Ping(c.ctx) },
		}
		for op, fn := range ops {
			began := time.Now()
			err := fn()
			if took := time.Since(began); took > 2*time.Second {
				t.Errorf("%s with a %s context took %v", op, c.name, took)
			}
			if !errors.Is(err, c.want) {
				t.Errorf("%s with a %s context: err = %v, want %v", op, c.name, err, c.want)
			}
		}
		if _, err := s.Get(ctxT(t), rec.CallSID, rec.Script.ID); !errors.Is(err, consent.ErrNotFound) {
			t.Errorf("Record with a %s context left a record (Get err = %v)", c.name, err)
		}
	}
}

// A started call is unsettled until it has a record; a language change
// updates its script; only calls started before the cut-off are listed,
// oldest first, with their sealed numbers intact.
func testUnsettled(t *testing.T, s consent.Store) {
	ctx := ctxT(t)
	base := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC) // earlier than any other subtest's calls
	en := consent.ScriptRef{ID: "hipaa", Version: "1", Language: "en-US", SHA256: strings.Repeat("a", 64)}
	es := consent.ScriptRef{ID: "hipaa-es", Version: "1", Language: "es-US", SHA256: strings.Repeat("b", 64)}
	older, newer, decided, late := CallSID(), CallSID(), CallSID(), CallSID()
	for i, sid := range []string{older, newer, decided, late} {
		c := consent.StartedCall{CallSID: sid, Script: en, From: Sealed("from"), To: Sealed("to"),
			StartedAt: base.Add(time.Duration(i) * time.Minute)}
		if sid == late {
			c.StartedAt = base.Add(time.Hour)
		}
		if err := s.CallStarted(ctx, c); err != nil {
			t.Fatalf("CallStarted: %v", err)
		}
	}
	// The caller of newer chose Spanish: the same call, its script updated,
	// its start time kept.
	if err := s.CallStarted(ctx, consent.StartedCall{CallSID: newer, Script: es, StartedAt: base.Add(30 * time.Minute)}); err != nil {
		t.Fatalf("CallStarted (language change): %v", err)
	}
	mustRecord(t, s, NewRecord(decided, en.ID))

	got, err := s.Unsettled(ctx, base.Add(10*time.Minute), 1000)
	if err != nil {
		t.Fatalf("Unsettled: %v", err)
	}
	var mine []consent.StartedCall
	for _, c := range got {
		switch c.CallSID {
		case older, newer, decided, late:
			mine = append(mine, c)
		}
	}
	if len(mine) != 2 || mine[0].CallSID != older || mine[1].CallSID != newer {
		t.Fatalf("Unsettled = %+v, want %s then %s", mine, older, newer)
	}
	if mine[1].Script != es || !mine[1].StartedAt.Equal(base.Add(time.Minute)) || mine[1].StartedAt.Location() != time.UTC {
		t.Errorf("language change: %+v, want the es script and the first start time in UTC", mine[1])
	}
	if mine[0].From == "" || mine[0].To == "" || mine[0].Script != en {
		t.Errorf("older call = %+v, want its sealed numbers and the en script", mine[0])
	}
	if limited, err := s.Unsettled(ctx, base.Add(10*time.Minute), 1); err != nil || len(limited) != 1 {
		t.Errorf("Unsettled with limit 1: %d calls, %v", len(limited), err)
	}
	one, err := s.StartedCall(ctx, newer)
	if err != nil || one.Script != es || !one.StartedAt.Equal(base.Add(time.Minute)) || one.From != mine[1].From {
		t.Errorf("StartedCall(%s) = %+v, %v; want the es script, the first start time, its sealed numbers", newer, one, err)
	}
	if _, err := s.StartedCall(ctx, CallSID()); !errors.Is(err, consent.ErrNotFound) {
		t.Errorf("StartedCall of an unknown call: %v, want ErrNotFound", err)
	}
}
