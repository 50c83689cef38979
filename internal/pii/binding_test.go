package pii_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/pii/piitest"
)

const (
	keyA = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	keyB = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff0f0e0d0c0b0a09080706050403020100"
	sidA = "CA0123456789abcdef0123456789abcdef"
	sidB = "CAfedcba9876543210fedcba9876543210"
)

// A value opens only for the place it was sealed for: swapped with its
// record's other field, moved to another record (another call, or another
// script of the same call), or into another table, it fails with a
// *PlaceError naming both places and the kid, never the value.
func TestValueOpensOnlyWhereItBelongs(t *testing.T) {
	k := piitest.Ring(t, keyA, "")
	from := consent.RecordBinding(sidA, "hipaa-consent", consent.FieldFrom)
	s := piitest.Seal(t, k, from, "+14158675309")
	if pt, err := k.OpenFor(from, s); err != nil || pt != "+14158675309" {
		t.Fatalf("OpenFor its own place: %q, %v", pt, err)
	}
	for name, elsewhere := range map[string]consent.Binding{
		"swapped into to":          consent.RecordBinding(sidA, "hipaa-consent", consent.FieldTo),
		"into transcript":          consent.RecordBinding(sidA, "hipaa-consent", consent.FieldTranscript),
		"another call's record":    consent.RecordBinding(sidB, "hipaa-consent", consent.FieldFrom),
		"another script's record":  consent.RecordBinding(sidA, "hipaa-consent-es", consent.FieldFrom),
		"started_calls, same call": consent.StartedCallBinding(sidA, consent.FieldFrom),
		"the secrets table":        consent.SecretBinding(pii.PseudonymSecretName),
		"a relay event":            {Table: "relay_event", ID: "rec_1", CallSID: sidA, Field: consent.FieldFrom},
	} {
		pt, err := k.OpenFor(elsewhere, s)
		if err == nil {
			t.Errorf("%s: opened to %q", name, pt)
			continue
		}
		var pe *pii.PlaceError
		if !errors.Is(err, pii.ErrWrongPlace) || !errors.As(err, &pe) || pe.Got != from || pe.Want != elsewhere {
			t.Errorf("%s: err = %v, want a PlaceError from %v", name, err, from)
		}
		msg := err.Error()
		if strings.Contains(msg, "8675309") || !strings.Contains(msg, k.KID()) || !strings.Contains(msg, `field "from"`) {
			t.Errorf("%s: error %q must name the field and kid, never the value", name, msg)
		}
	}
	// The started call's own binding has no script: a record's value is
	// not one of its, and the other way round.
	sc := piitest.Seal(t, k, consent.StartedCallBinding(sidA, consent.FieldFrom), "+14158675309")
	if _, err := k.OpenFor(from, sc); !errors.Is(err, pii.ErrWrongPlace) {
		t.Errorf("started call's from opened as the record's: %v", err)
	}
}

// Values sealed before bindings existed (no binding header) open from any
// place, under the active or a retired key: they are rotated, not refused.
func TestLegacyValuesOpen(t *testing.T) {
	k := piitest.Ring(t, keyB, keyA)
	for _, hexKey := range []string{keyA, keyB} {
		legacy := piitest.LegacySeal(t, hexKey, "yes I agree")
		h, err := pii.ReadHeader(legacy)
		if err != nil || !h.Binding.IsZero() || h.KID != pii.KeyID(mustHex(t, hexKey)) {
			t.Fatalf("legacy header %+v, %v", h, err)
		}
		for _, b := range []consent.Binding{
			consent.RecordBinding(sidA, "hipaa-consent", consent.FieldTranscript),
			consent.StartedCallBinding(sidB, consent.FieldTo),
		} {
			if pt, err := k.OpenFor(b, legacy); err != nil || pt != "yes I agree" {
				t.Errorf("legacy value for %v: %q, %v", b, pt, err)
			}
		}
		if pt, got, err := k.OpenAny(legacy); err != nil || pt != "yes I agree" || !got.IsZero() {
			t.Errorf("OpenAny(legacy) = %q, %v, %v", pt, got, err)
		}
	}
}

// OpenAny opens a lone value by its own header and says where it belongs.
func TestOpenAnyReportsBinding(t *testing.T) {
	k := piitest.Ring(t, keyA, "")
	b := consent.SecretBinding("audit_signing_key")
	pt, got, err := k.OpenAny(piitest.Seal(t, k, b, "c2VlZA=="))
	if err != nil || pt != "c2VlZA==" || got != b {
		t.Fatalf("OpenAny = %q, %v, %v", pt, got, err)
	}
	if !strings.Contains(got.String(), "secrets id audit_signing_key") {
		t.Errorf("String() = %q", got.String())
	}
}

// Sealing demands a place: no table or no field is refused.
func TestSealForNeedsAPlace(t *testing.T) {
	k := piitest.Ring(t, keyA, "")
	for _, b := range []consent.Binding{{}, {Table: "consent_records"}, {Field: "from"}} {
		if _, err := k.SealFor(b, "+14158675309"); err == nil {
			t.Errorf("SealFor(%+v) sealed", b)
		}
	}
	if s, err := k.SealFor(consent.StartedCallBinding(sidA, consent.FieldFrom), ""); s != "" || err != nil {
		t.Errorf(`SealFor(""): %q, %v`, s, err)
	}
}

func mustHex(t *testing.T, h string) []byte {
	t.Helper()
	k, err := pii.ParseKey(h)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
