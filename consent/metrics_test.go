package consent_test

import (
	"context"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/internal/telemetry/telemetrytest"
)

// Two instances (two services on one lock) answer the same call at once:
// the second finds the lock busy, waits, and reads the first's decision
// back. One decision, one busy lock, one wait observed; the status
// callback's no_response after it is no conflict.
func TestServiceMetrics(t *testing.T) {
	ctx := context.Background()
	sq, err := sqlitestore.Open(ctx, t.TempDir(), sqlitestore.Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sq.Close() })
	store := &gatedStore{Store: sq, gate: make(chan struct{}), entered: make(chan struct{})}
	locker := memlock.New()
	m := telemetry.New()
	keys, err := pii.NewKeyring([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	newSvc := func() *consent.Service {
		return consent.NewService(consent.Config{
			Store: store, Locker: locker, Seal: keys.SealFor, Open: keys.OpenFor, Metrics: m,
			PatientRef: pii.NewPseudonymizer([]byte("pseudonym-key-0123456789abcdef01")).Ref,
		})
	}
	first, second := newSvc(), newSvc()
	a := consent.Answer{
		Call: consent.Call{CallSID: "CA0123456789abcdef0123456789abcdef",
			Script: consent.ScriptRef{ID: "hipaa", Version: "1", Language: "en-US", SHA256: "00"}},
		Source: consent.SourceDTMF, Intent: consent.Agree,
		Heard: consent.Heard{Timing: consent.TimingEstimated},
	}
	value := func(name string, labels ...string) float64 {
		return telemetrytest.Value(t, m, "consentline_"+name, labels...)
	}

	done := make(chan error, 1)
	go func() { _, err := first.Decide(ctx, a); done <- err }()
	<-store.entered // the first holds the call's lock
	waited := make(chan consent.Outcome, 1)
	go func() {
		out, err := second.Decide(ctx, a)
		if err != nil {
			t.Error(err)
		}
		waited <- out
	}()
	for value("lock_busy_total") == 0 {
		select {
		case <-done:
			t.Fatal("the first decided before the second found the lock busy")
		case <-time.After(time.Millisecond):
		}
	}
	close(store.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if out := <-waited; out.Created || !out.Recorded {
		t.Errorf("the second delivery: %+v, want the first's decision read back", out)
	}
	if got := value("lock_wait_seconds"); got != 1 {
		t.Errorf("lock waits observed = %v, want 1", got)
	}
	if got := value("decisions_total", "outcome", "granted", "source", "dtmf", "timing", "estimated"); got != 1 {
		t.Errorf("decisions granted/dtmf/estimated = %v, want 1", got)
	}
	if _, created, err := first.RecordNoResponse(ctx, a.Call, consent.SourceStatusCallback, a.Heard); err != nil || created {
		t.Fatalf("no_response after the decision: created %v, %v", created, err)
	}
	if got := value("decision_conflicts_total"); got != 0 {
		t.Errorf("conflicts = %v after a status callback, want 0", got)
	}
	if got := value("decisions_total"); got != 1 {
		t.Errorf("decisions = %v, want 1", got)
	}
}
