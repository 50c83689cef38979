package storetest

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/pii/piitest"
)

// The keys of the rotation tests: values are written under oldKey, then
// rotated with newKey active and oldKey retired.
const (
	oldKey = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	newKey = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff0f0e0d0c0b0a09080706050403020100"
)

// RunResealer runs the key-rotation suite against a store that implements
// consent.Resealer. Its subtests walk whole tables, so unlike Run's, open
// must give each an empty, migrated store of its own.
func RunResealer(t *testing.T, open func(t *testing.T) consent.Store) {
	resealer := func(t *testing.T) (consent.Store, consent.Resealer) {
		s := open(t)
		r, ok := s.(consent.Resealer)
		if !ok {
			t.Fatalf("%T does not implement consent.Resealer (key rotation)", s)
		}
		return s, r
	}
	for name, test := range map[string]func(*testing.T, consent.Store, consent.Resealer){
		"SealedRowsPages":          testSealedRowsPages,
		"ResealComparesAndSets":    testResealCAS,
		"RotateKeys":               testRotate,
		"RotateRefusesMovedValues": testRotateMoved,
	} {
		t.Run(name, func(t *testing.T) {
			s, r := resealer(t)
			test(t, s, r)
		})
	}
}

// phi is a plaintext per call and field, so a test can tell every value
// apart.
func phi(callSID, field string) string { return field + ":" + callSID[len(callSID)-6:] }

// fixture is what a rotation test stored: n records (some with values
// sealed before bindings, one without a transcript), as many started calls,
// and two secrets, all under oldKey.
type fixture struct {
	records []consent.Record
	started []string
	ref     string // the patient_ref of a number before rotation
	values  int    // non-empty sealed values stored
}

const refNumber = "+14155550100"

func storeFixture(t *testing.T, s consent.Store, n int) fixture {
	t.Helper()
	ctx := ctxT(t)
	old := piitest.Ring(t, oldKey, "")
	var f fixture
	for i := range n {
		rec := NewRecord(CallSID(), "hipaa-consent")
		for _, v := range []struct {
			dst   *consent.Sealed
			field string
		}{{&rec.From, consent.FieldFrom}, {&rec.To, consent.FieldTo}, {&rec.Transcript, consent.FieldTranscript}} {
			switch {
			case i == 1 && v.field == consent.FieldTranscript:
				*v.dst = "" // absent: stays absent
				continue
			case i%3 == 0: // sealed before values were bound
				*v.dst = piitest.LegacySeal(t, oldKey, phi(rec.CallSID, v.field))
			default:
				*v.dst = piitest.Seal(t, old, consent.RecordBinding(rec.CallSID, rec.Script.ID, v.field), phi(rec.CallSID, v.field))
			}
			f.values++
		}
		mustRecord(t, s, rec)
		f.records = append(f.records, rec)

		sid := CallSID()
		c := consent.StartedCall{CallSID: sid, Script: rec.Script, StartedAt: time.Now(),
			From: piitest.Seal(t, old, consent.StartedCallBinding(sid, consent.FieldFrom), phi(sid, consent.FieldFrom)),
			To:   piitest.LegacySeal(t, oldKey, phi(sid, consent.FieldTo))}
		if err := s.CallStarted(ctx, c); err != nil {
			t.Fatal(err)
		}
		f.started = append(f.started, sid)
		f.values += 2

		// The caller's answer audio kept by the media stream.
		m := consent.StreamMeasurement{CallSID: rec.CallSID, ScriptID: rec.Script.ID, StartedAt: time.Now(),
			PromptOnsetMS: 300, PromptEndMS: -1, AnswerOnsetMS: 4200, AnswerEndMS: 5100,
			AnswerAudio: piitest.Seal(t, old, consent.StreamBinding(rec.CallSID, rec.Script.ID), phi(rec.CallSID, consent.FieldAnswerAudio))}
		if err := s.SaveStreamMeasurement(ctx, m); err != nil {
			t.Fatal(err)
		}
		f.values++
	}
	p, err := pii.LoadPseudonymizer(ctx, s, old)
	if err != nil {
		t.Fatal(err)
	}
	f.ref = p.Ref(refNumber)
	// Another secret, sealed before bindings, like an audit signing key
	// stored by an older version.
	if _, err := s.Secret(ctx, "audit_signing_key", func() (consent.Sealed, error) {
		return piitest.LegacySeal(t, oldKey, "c2VlZC1iYXNlNjQ="), nil
	}); err != nil {
		t.Fatal(err)
	}
	f.values += 2
	return f
}

// openAll opens every stored value with k, each for its own place, and
// checks it is what was sealed.
func (f fixture) openAll(t *testing.T, s consent.Store, k *pii.Keyring) {
	t.Helper()
	ctx := ctxT(t)
	for _, want := range f.records {
		rec := mustGet(t, s, want.CallSID, want.Script.ID)
		for field, v := range map[string]consent.Sealed{consent.FieldFrom: rec.From, consent.FieldTo: rec.To, consent.FieldTranscript: rec.Transcript} {
			got, err := k.OpenFor(consent.RecordBinding(rec.CallSID, rec.Script.ID, field), v)
			if err != nil {
				t.Fatalf("record %s %s: %v", rec.CallSID, field, err)
			}
			if wantAbsent := field == consent.FieldTranscript && want.Transcript == ""; (wantAbsent && got != "") || (!wantAbsent && got != phi(rec.CallSID, field)) {
				t.Fatalf("record %s %s opened to the wrong value", rec.CallSID, field)
			}
		}
	}
	for _, rec := range f.records {
		m, err := s.StreamMeasurement(ctx, rec.CallSID, rec.Script.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := k.OpenFor(consent.StreamBinding(rec.CallSID, rec.Script.ID), m.AnswerAudio); err != nil || got != phi(rec.CallSID, consent.FieldAnswerAudio) {
			t.Fatalf("answer audio of %s: %v", rec.CallSID, err)
		}
	}
	for _, sid := range f.started {
		c, err := s.StartedCall(ctx, sid)
		if err != nil {
			t.Fatal(err)
		}
		for field, v := range map[string]consent.Sealed{consent.FieldFrom: c.From, consent.FieldTo: c.To} {
			if got, err := k.OpenFor(consent.StartedCallBinding(sid, field), v); err != nil || got != phi(sid, field) {
				t.Fatalf("started call %s %s: %v", sid, field, err)
			}
		}
	}
	p, err := pii.LoadPseudonymizer(ctx, s, k)
	if err != nil {
		t.Fatalf("patient_ref key: %v", err)
	}
	if p.Ref(refNumber) != f.ref {
		t.Fatal("patient_ref changed: the pseudonym key must be re-sealed, not regenerated")
	}
	v, err := s.Secret(ctx, "audit_signing_key", func() (consent.Sealed, error) { return "", errors.New("must exist") })
	if err != nil {
		t.Fatal(err)
	}
	if got, err := k.OpenFor(consent.SecretBinding("audit_signing_key"), v); err != nil || got != "c2VlZC1iYXNlNjQ=" {
		t.Fatalf("audit_signing_key: %v", err)
	}
}

// testRotate: values under an old key, some sealed before bindings, are
// rotated with the new key active and the old one retired; a run cut short
// after one batch resumes where it stopped; afterwards everything opens
// with only the new key, patient_ref is unchanged, and a further run
// rotates nothing.
func testRotate(t *testing.T, s consent.Store, r consent.Resealer) {
	ctx := ctxT(t)
	f := storeFixture(t, s, 7)
	rotating := piitest.Ring(t, newKey, oldKey)

	before, err := pii.TakeCensus(ctx, r, rotating, 0)
	if err != nil {
		t.Fatal(err)
	}
	if before.Values != f.values || before.Retired != f.values || before.Unbound == 0 {
		t.Fatalf("census before: %+v, want %d values all under the retired key, some unbound", before, f.values)
	}

	// A run that dies after its first batch (batches of 2 rows).
	crash := errors.New("killed after one batch")
	batches := 0
	first, err := pii.Rotate(ctx, r, rotating, pii.RotateOptions{Batch: 2, AfterBatch: func(string, int) error {
		batches++
		return crash
	}})
	if !errors.Is(err, crash) || batches != 1 || first.Rotated == 0 || first.Rotated >= f.values {
		t.Fatalf("interrupted run: %+v, %v after %d batches; want some but not all of %d values rotated", first, err, batches, f.values)
	}
	// The rerun resumes: what the first run committed is skipped.
	rest, err := pii.Rotate(ctx, r, rotating, pii.RotateOptions{Batch: 2})
	if err != nil || rest.Failed != 0 || rest.Changed != 0 {
		t.Fatalf("resumed run: %+v, %v", rest, err)
	}
	if first.Rotated+rest.Rotated != f.values || rest.Current != first.Rotated {
		t.Fatalf("rotated %d then %d (skipping %d), want %d in all", first.Rotated, rest.Rotated, rest.Current, f.values)
	}
	again, err := pii.Rotate(ctx, r, rotating, pii.RotateOptions{})
	if err != nil || again.Rotated != 0 || again.Current != f.values {
		t.Fatalf("a second full run: %+v, %v; want 0 rotated, %d current", again, err, f.values)
	}
	after, err := pii.TakeCensus(ctx, r, rotating, 3)
	if err != nil {
		t.Fatal(err)
	}
	if after.Values != f.values || after.Retired != 0 || after.Unbound != 0 || after.ByKID[rotating.KID()] != f.values {
		t.Fatalf("census after: %+v, want all %d under %s and bound", after, f.values, rotating.KID())
	}
	// The retired key can go.
	f.openAll(t, s, piitest.Ring(t, newKey, ""))
}

// testRotateMoved: a value moved to another field (here: a record's from
// and to swapped in the database) is not "rotated" into its new place,
// which would launder the move; it is reported, by table, row, field and
// kid, and left as it is.
func testRotateMoved(t *testing.T, s consent.Store, r consent.Resealer) {
	ctx := ctxT(t)
	f := storeFixture(t, s, 2)
	victim := f.records[1] // bound values
	if n, err := r.Reseal(ctx, consent.TableConsentRecords, []consent.SealedUpdate{
		{Key: victim.ID, Field: consent.FieldFrom, Old: victim.From, New: victim.To},
		{Key: victim.ID, Field: consent.FieldTo, Old: victim.To, New: victim.From},
	}); err != nil || n != 2 {
		t.Fatalf("swapping from and to: %d, %v", n, err)
	}
	rep, err := pii.Rotate(ctx, r, piitest.Ring(t, newKey, oldKey), pii.RotateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 2 || rep.Rotated != f.values-2 || len(rep.Errors) != 2 {
		t.Fatalf("rotation of a store with a swapped pair: %+v", rep)
	}
	for _, e := range rep.Errors {
		msg := e.Error()
		if !errors.Is(e, pii.ErrWrongPlace) || !strings.Contains(msg, victim.ID) || strings.Contains(msg, phi(victim.CallSID, "from")) {
			t.Errorf("error %q: want ErrWrongPlace naming the row, not the value", msg)
		}
	}
	got := mustGet(t, s, victim.CallSID, victim.Script.ID)
	if got.From != victim.To || got.To != victim.From {
		t.Fatal("the moved values were rewritten")
	}
}

// testSealedRowsPages: a walk in pages visits every row once, in key
// order, with its place and values.
func testSealedRowsPages(t *testing.T, s consent.Store, r consent.Resealer) {
	f := storeFixture(t, s, 5)
	ctx := ctxT(t)
	want := map[string]int{consent.TableConsentRecords: 5, consent.TableStartedCalls: 5, consent.TableSecrets: 2, consent.TableStreamMeasurements: 5}
	for _, table := range consent.SealedTables {
		var keys []string
		after := ""
		for {
			rows, err := r.SealedRows(ctx, table, after, 2)
			if err != nil {
				t.Fatal(err)
			}
			for _, row := range rows {
				keys = append(keys, row.Key)
				if row.Place.Table != table || row.Place.Field != "" {
					t.Errorf("%s row %s: place %+v", table, row.Key, row.Place)
				}
			}
			if len(rows) < 2 {
				break
			}
			after = rows[len(rows)-1].Key
		}
		if len(keys) != want[table] || !slices.IsSorted(keys) || len(slices.Compact(slices.Clone(keys))) != len(keys) {
			t.Errorf("%s: walked keys %v, want %d distinct in order", table, keys, want[table])
		}
	}
	rows, err := r.SealedRows(ctx, consent.TableConsentRecords, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range rows {
		i := slices.IndexFunc(f.records, func(rec consent.Record) bool { return rec.ID == row.Key })
		if i < 0 {
			t.Fatalf("unknown record %s", row.Key)
		}
		rec := f.records[i]
		if row.Place != consent.RecordBinding(rec.CallSID, rec.Script.ID, "") || row.Values[consent.FieldFrom] != rec.From ||
			row.Values[consent.FieldTo] != rec.To || row.Values[consent.FieldTranscript] != rec.Transcript {
			t.Errorf("record row %s does not match what was stored", row.Key)
		}
	}
	if _, err := r.SealedRows(ctx, "relay_audit", "", 10); err == nil {
		t.Error("SealedRows of relay_audit: want an error, it is never rewritten")
	}
}

// testResealCAS: Reseal replaces a value only while it is still the one
// read, so a concurrent writer wins; bad updates write nothing.
func testResealCAS(t *testing.T, s consent.Store, r consent.Resealer) {
	ctx := ctxT(t)
	rec := NewRecord(CallSID(), "hipaa-consent")
	mustRecord(t, s, rec)
	newer := Sealed("written by serve meanwhile")
	n, err := r.Reseal(ctx, consent.TableConsentRecords, []consent.SealedUpdate{
		{Key: rec.ID, Field: consent.FieldFrom, Old: Sealed("not what is stored"), New: newer},
		{Key: rec.ID, Field: consent.FieldTo, Old: rec.To, New: newer},
	})
	if err != nil || n != 1 {
		t.Fatalf("Reseal: %d, %v; want 1 replaced", n, err)
	}
	got := mustGet(t, s, rec.CallSID, rec.Script.ID)
	if got.From != rec.From || got.To != newer || got.Transcript != rec.Transcript {
		t.Fatal("Reseal replaced a value that had changed, or missed one that had not")
	}
	for name, u := range map[string]consent.SealedUpdate{
		"unknown field":  {Key: rec.ID, Field: "patient_ref", Old: "", New: newer},
		"plaintext":      {Key: rec.ID, Field: consent.FieldTranscript, Old: rec.Transcript, New: "yes. i agree. thanks. bye. ok"},
		"empty new":      {Key: rec.ID, Field: consent.FieldTranscript, Old: rec.Transcript, New: ""},
		"no key":         {Field: consent.FieldTranscript, Old: rec.Transcript, New: newer},
		"SQL in a field": {Key: rec.ID, Field: "transcript_sealed = '' --", Old: rec.Transcript, New: newer},
	} {
		if _, err := r.Reseal(ctx, consent.TableConsentRecords, []consent.SealedUpdate{u}); err == nil {
			t.Errorf("%s: Reseal accepted it", name)
		}
	}
	if _, err := r.Reseal(ctx, "relay_audit", []consent.SealedUpdate{{Key: "x", Field: "event", New: newer}}); err == nil {
		t.Error("Reseal of relay_audit: want an error")
	}
	if got := mustGet(t, s, rec.CallSID, rec.Script.ID); got.Transcript != rec.Transcript {
		t.Fatal("a refused Reseal wrote")
	}
	// The started call and secret tables take their own fields.
	sid := CallSID()
	if err := s.CallStarted(ctx, consent.StartedCall{CallSID: sid, Script: rec.Script, From: Sealed("f"), To: Sealed("t"), StartedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	c, _ := s.StartedCall(ctx, sid)
	if n, err := r.Reseal(ctx, consent.TableStartedCalls, []consent.SealedUpdate{{Key: sid, Field: consent.FieldTo, Old: c.To, New: newer}}); err != nil || n != 1 {
		t.Fatalf("Reseal started call: %d, %v", n, err)
	}
	name := "k-" + NewID()
	old, err := s.Secret(ctx, name, func() (consent.Sealed, error) { return Sealed("s"), nil })
	if err != nil {
		t.Fatal(err)
	}
	if n, err := r.Reseal(ctx, consent.TableSecrets, []consent.SealedUpdate{{Key: name, Field: consent.FieldSecretValue, Old: old, New: newer}}); err != nil || n != 1 {
		t.Fatalf("Reseal secret: %d, %v", n, err)
	}
	if v, _ := s.Secret(ctx, name, nil); v != newer {
		t.Fatal("secret not replaced")
	}
}
