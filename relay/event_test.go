package relay

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/pii/piitest"
)

func TestConsentEventJSON(t *testing.T) {
	k := keyring(t, hexA, "")
	rec := record(t, k, "rec_1", "CA123")
	ev, err := NewConsentEvent(rec, k)
	if err != nil {
		t.Fatal(err)
	}
	body, err := ev.Body(PIIEncrypted)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"id": "rec_1", "type": "consent.granted", "occurred_at": "2026-03-01T12:00:00.123Z",
		"call_sid": "CA123", "source": "speech", "confidence": 0.93,
		"disclosure_heard_ms": float64(12345), "barge_in": true,
		"must_hear_complete": true, "timing": "estimated",
		"patient_ref": "pr_0123456789abcdef0123456789abcdef",
	}
	for f, v := range want {
		if m[f] != v {
			t.Errorf("%s = %v, want %v", f, m[f], v)
		}
	}
	d, _ := m["disclosure"].(map[string]any)
	if d["id"] != "hipaa-consent" || d["version"] != "2026-01" || d["language"] != "en-US" || len(d["sha256"].(string)) != 64 || len(d) != 4 {
		t.Errorf("disclosure = %v", d)
	}
	if len(m) != len(want)+1+3 {
		t.Errorf("unexpected fields: %v", keys(m))
	}
	// The at-rest JWE is under the active key and bound to the record,
	// which is the event: re-used as is.
	if ev.From != rec.From || ev.Transcript != rec.Transcript {
		t.Error("active-key values should be re-used")
	}
	for _, f := range []string{"from", "to", "transcript"} {
		s := consent.Sealed(m[f].(string))
		h, err := pii.ReadHeader(s)
		if err != nil || h.KID != k.KID() || h.Binding != consent.RecordBinding("CA123", "hipaa-consent", f) || ValueBinding(ev, f) != h.Binding {
			t.Errorf("%s: header %+v, %v; want the active kid and the record's binding", f, h, err)
		}
	}
	for _, phi := range []string{"8675309", "5551212", "agree"} {
		if strings.Contains(string(body), phi) {
			t.Fatalf("body contains PHI %q", phi)
		}
	}

	omit, _ := ev.Body(PIIOmit)
	var mo map[string]any
	_ = json.Unmarshal(omit, &mo)
	for _, f := range []string{"from", "to", "transcript"} {
		if _, ok := mo[f]; ok {
			t.Errorf("omit mode still has %s", f)
		}
	}
	if mo["patient_ref"] == nil || mo["disclosure"] == nil {
		t.Error("omit mode dropped clear fields")
	}
	// deliveryBody: stored bytes verbatim when encrypted.
	if b, _ := deliveryBody(body, PIIEncrypted); string(b) != string(body) {
		t.Error("encrypted delivery body differs from the stored event")
	}
	if b, _ := deliveryBody(body, PIIOmit); string(b) != string(omit) {
		t.Error("omit delivery body differs from Body(PIIOmit)")
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestConsentEventTypesAndOptionalFields(t *testing.T) {
	k := keyring(t, hexA, "")
	for d, typ := range map[consent.Decision]string{consent.Granted: "consent.granted", consent.Declined: "consent.declined", consent.NoResponse: "consent.no_response"} {
		rec := record(t, k, "r", "CA1")
		rec.Decision, rec.Confidence, rec.Transcript, rec.Source = d, nil, "", consent.SourceDTMF
		rec.BargeIn, rec.DisclosureHeardMS = false, 0
		ev, err := NewConsentEvent(rec, k)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(ev)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		if m["type"] != typ {
			t.Errorf("type %v want %s", m["type"], typ)
		}
		if _, ok := m["confidence"]; ok {
			t.Error("confidence present though nil")
		}
		if _, ok := m["transcript"]; ok {
			t.Error("empty transcript present")
		}
		// Zero values of required fields are still present.
		if m["barge_in"] != false || m["disclosure_heard_ms"] != float64(0) {
			t.Errorf("barge_in/disclosure_heard_ms missing: %v", m)
		}
	}
	rec := record(t, k, "r", "CA1")
	rec.Decision = "maybe"
	if _, err := NewConsentEvent(rec, k); err == nil {
		t.Error("unknown decision accepted")
	}
}

func TestConsentEventResealsRetiredAndRejectsUnknown(t *testing.T) {
	old := keyring(t, hexA, "")
	rec := record(t, old, "r", "CA1")
	rotated := keyring(t, hexB, hexA)
	ev, err := NewConsentEvent(rec, rotated)
	if err != nil {
		t.Fatal(err)
	}
	if pii.SealedKID(ev.From) != rotated.KID() {
		t.Fatal("retired-key value not re-sealed under the active key")
	}
	if pt, _ := rotated.OpenFor(consent.RecordBinding("CA1", "hipaa-consent", "from"), ev.From); pt != "+14158675309" {
		t.Fatal("re-sealed value does not open to the original")
	}
	_, err = NewConsentEvent(rec, keyring(t, hexB, ""))
	if err == nil || !strings.Contains(err.Error(), old.KID()) || strings.Contains(err.Error(), "8675309") {
		t.Fatalf("unknown kid: %v", err)
	}
}

func TestCallCompletedEvent(t *testing.T) {
	k := keyring(t, hexA, "")
	key, _ := pii.NewPseudonymKey()
	p := pii.NewPseudonymizer(key)
	ev, err := NewCallCompletedEvent(CallCompleted{CallSID: "CA9", From: "+1 (415) 867-5309", To: "+18005551212",
		At: time.Date(2026, 3, 1, 12, 5, 0, 0, time.FixedZone("x", 3600))}, k, p)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(ev)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	if m["id"] != "cc_CA9" || m["type"] != "call.completed" || m["source"] != "status_callback" ||
		m["occurred_at"] != "2026-03-01T11:05:00.000Z" || m["patient_ref"] != p.Ref("+14158675309") {
		t.Fatalf("event = %s", b)
	}
	for _, f := range []string{"disclosure", "barge_in", "disclosure_heard_ms", "confidence", "transcript"} {
		if _, ok := m[f]; ok {
			t.Errorf("call.completed has %s", f)
		}
	}
	// No record: the values are bound to the event itself.
	bound := consent.Binding{Table: "relay_event", ID: "cc_CA9", CallSID: "CA9", Field: "from"}
	if pt, _ := k.OpenFor(bound, ev.From); pt != "+1 (415) 867-5309" || ValueBinding(ev, "from") != bound {
		t.Error("from does not open")
	}
	bound.Field = "to"
	if _, err := k.OpenFor(bound, ev.From); !errors.Is(err, pii.ErrWrongPlace) {
		t.Errorf("from opened as to: %v", err)
	}
	if strings.Contains(string(b), "8675309") {
		t.Fatal("PHI in event")
	}
}

func TestParsePIIMode(t *testing.T) {
	for in, want := range map[string]PIIMode{"": PIIEncrypted, "encrypted": PIIEncrypted, "omit": PIIOmit, " omit\n": PIIOmit} {
		if got, err := ParsePIIMode(in); err != nil || got != want {
			t.Errorf("%q -> %v %v", in, got, err)
		}
	}
	if _, err := ParsePIIMode("clear"); err == nil || !strings.Contains(err.Error(), "RELAY_PII") {
		t.Error(err)
	}
}

// A record whose values were swapped or moved in the database makes no
// event: the value does not open for the field it was read from. A legacy
// (unbound) value is re-sealed bound.
func TestConsentEventRefusesMovedValues(t *testing.T) {
	k := keyring(t, hexA, "")
	swapped := record(t, k, "r", "CA1")
	swapped.From, swapped.To = swapped.To, swapped.From
	other := record(t, k, "r2", "CA2")
	moved := record(t, k, "r", "CA1")
	moved.Transcript = other.Transcript
	for name, rec := range map[string]consent.Record{"swapped": swapped, "moved": moved} {
		_, err := NewConsentEvent(rec, k)
		if !errors.Is(err, pii.ErrWrongPlace) || strings.Contains(err.Error(), "8675309") || strings.Contains(err.Error(), "agree") {
			t.Errorf("%s: %v, want ErrWrongPlace without the value", name, err)
		}
	}
	legacy := record(t, k, "r", "CA1")
	legacy.From = piitest.LegacySeal(t, hexA, "+14158675309")
	ev, err := NewConsentEvent(legacy, k)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := pii.ReadHeader(ev.From); h.Binding != consent.RecordBinding("CA1", "hipaa-consent", "from") {
		t.Errorf("legacy value in the event bound to %+v", h.Binding)
	}
}
