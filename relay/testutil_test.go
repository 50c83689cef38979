package relay

import (
	"sync"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
)

const (
	hexA = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	hexB = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff0f0e0d0c0b0a09080706050403020100"
)

func keyring(t testing.TB, active, retired string) *pii.Keyring {
	t.Helper()
	k, err := pii.ParseKeyring(active, retired)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fakeClock is the injected clock: tests move it, nothing sleeps.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// record builds a sealed consent record as the IVR would: each value bound
// to the record's call, script and field.
func record(t testing.TB, k *pii.Keyring, id, callSID string) consent.Record {
	t.Helper()
	seal := func(field, s string) consent.Sealed {
		v, err := k.SealFor(consent.RecordBinding(callSID, "hipaa-consent", field), s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	conf := 0.93
	return consent.Record{
		ID:      id,
		CallSID: callSID,
		Script: consent.ScriptRef{ID: "hipaa-consent", Version: "2026-01", Language: "en-US",
			SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
		Decision:          consent.Granted,
		Source:            consent.SourceSpeech,
		Confidence:        &conf,
		BargeIn:           true,
		DisclosureHeardMS: 12345,
		MustHearComplete:  true,
		Timing:            consent.TimingEstimated,
		PatientRef:        "pr_0123456789abcdef0123456789abcdef",
		From:              seal(consent.FieldFrom, "+14158675309"),
		To:                seal(consent.FieldTo, "+18005551212"),
		Transcript:        seal(consent.FieldTranscript, "yes I agree"),
		DecidedAt:         time.Date(2026, 3, 1, 12, 0, 0, 123456000, time.UTC),
	}
}

type muLocker = sync.Mutex
