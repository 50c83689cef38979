package consent_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
)

// The service seals each value for its place, and the sweep (Unsettled)
// opens a started call's numbers only from their own place: numbers swapped
// in the database, or copied in from another call's row, stop the sweep
// with an error naming the field and kid, not the number.
func TestServiceBindsValuesToTheirPlace(t *testing.T) {
	ctx := context.Background()
	sq, err := sqlitestore.Open(ctx, t.TempDir(), sqlitestore.Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sq.Close() })
	svc := newService(t, sq, memlock.New())
	script := consent.ScriptRef{ID: "hipaa", Version: "1", Language: "en-US", SHA256: "00"}
	a := consent.Call{CallSID: "CA0123456789abcdef0123456789abcdef", Script: script, From: "+14155550123", To: "+18005550199"}
	b := consent.Call{CallSID: "CAfedcba9876543210fedcba9876543210", Script: script, From: "+14155550124", To: "+18005550199"}
	for _, c := range []consent.Call{a, b} {
		if err := svc.CallStarted(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	later := time.Now().Add(time.Hour)
	if calls, err := svc.Unsettled(ctx, later, 10); err != nil || len(calls) != 2 {
		t.Fatalf("Unsettled: %v, %v", calls, err)
	}

	// A record's values are sealed for (call, script, field).
	if _, err := svc.Decide(ctx, consent.Answer{Call: a, Source: consent.SourceDTMF, Intent: consent.Agree, Heard: consent.Heard{Timing: consent.TimingEstimated}}); err != nil {
		t.Fatal(err)
	}
	rec, err := sq.Get(ctx, a.CallSID, script.ID)
	if err != nil {
		t.Fatal(err)
	}
	for field, v := range map[string]consent.Sealed{consent.FieldFrom: rec.From, consent.FieldTo: rec.To} {
		h, err := pii.ReadHeader(v)
		if err != nil || h.Binding != consent.RecordBinding(a.CallSID, script.ID, field) {
			t.Errorf("record %s bound to %+v, %v", field, h.Binding, err)
		}
	}

	ca, _ := sq.StartedCall(ctx, b.CallSID)
	other, _ := sq.StartedCall(ctx, a.CallSID)
	for name, u := range map[string][]consent.SealedUpdate{
		"from and to swapped": {
			{Key: b.CallSID, Field: consent.FieldFrom, Old: ca.From, New: ca.To},
			{Key: b.CallSID, Field: consent.FieldTo, Old: ca.To, New: ca.From},
		},
		"from copied from another call": {{Key: b.CallSID, Field: consent.FieldFrom, Old: ca.From, New: other.From}},
		"from copied from a record":     {{Key: b.CallSID, Field: consent.FieldFrom, Old: ca.From, New: rec.From}},
	} {
		if _, err := sq.Reseal(ctx, consent.TableStartedCalls, u); err != nil {
			t.Fatal(err)
		}
		_, err := svc.Unsettled(ctx, later, 10)
		if !errors.Is(err, pii.ErrWrongPlace) || !strings.Contains(err.Error(), b.CallSID) || strings.Contains(err.Error(), "555012") {
			t.Errorf("%s: Unsettled err = %v, want ErrWrongPlace naming the call, not the number", name, err)
		}
		// Put the row back for the next case.
		var undo []consent.SealedUpdate
		for _, x := range u {
			undo = append(undo, consent.SealedUpdate{Key: x.Key, Field: x.Field, Old: x.New, New: x.Old})
		}
		if n, err := sq.Reseal(ctx, consent.TableStartedCalls, undo); err != nil || n != len(undo) {
			t.Fatalf("undo: %d, %v", n, err)
		}
	}
}
