package relay

import (
	"context"
	"crypto/rand"
	"net/http"
	"testing"
	"time"

	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/internal/telemetry/telemetrytest"
)

// Each relay metric moves when its event happens: the queue depth read on
// scrape, a delivery, a retry and a dead letter with their attempts, the
// delivery lag, a call.completed commit and a checkpoint written.
func TestSQLiteRelayMetrics(t *testing.T) {
	m := telemetry.New()
	runRelayMetrics(t, m, newSQLiteEnv(t, envOpts{metrics: m}))
}

func TestPostgresRelayMetrics(t *testing.T) {
	m := telemetry.New()
	runRelayMetrics(t, m, newPGEnv(t, envOpts{metrics: m}))
}

func runRelayMetrics(t *testing.T, m *telemetry.Metrics, e *env) {
	m.WatchRelayQueue(e.relay.QueueDepth)
	ctx := context.Background()
	e.hook.respond = func(n int, w http.ResponseWriter, r *http.Request, body []byte) {
		switch r.Header.Get(HeaderID) {
		case "rec_retry":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "rec_dead":
			w.WriteHeader(http.StatusUnprocessableEntity)
		}
	}
	for _, id := range []string{"rec_ok", "rec_retry", "rec_dead"} {
		if _, _, err := e.store.Record(ctx, record(t, e.keyring, id, "CA_"+id)); err != nil {
			t.Fatal(err)
		}
	}
	value := func(name string, labels ...string) float64 {
		return telemetrytest.Value(t, m, "consentline_"+name, labels...)
	}
	if got := value("relay_queue_jobs", "state", "available"); got != 3 {
		t.Errorf("queue depth before the workers start: %v available, want 3", got)
	}

	e.start(t)
	e.waitState(t, "rec_ok", "completed")
	e.waitState(t, "rec_retry", "retryable")
	e.waitState(t, "rec_dead", "cancelled")
	for outcome, want := range map[string]float64{"delivered": 1, "retry": 1, "dead": 1} {
		if got := value("relay_attempts_total", "outcome", outcome); got != want {
			t.Errorf("relay_attempts_total{outcome=%q} = %v, want %v", outcome, got, want)
		}
	}
	if got := value("relay_dead_letters_total", "reason", "rejected"); got != 1 {
		t.Errorf("dead letters (rejected) = %v, want 1", got)
	}
	if got := value("relay_delivery_lag_seconds"); got != 1 {
		t.Errorf("delivery lag observations = %v, want 1", got)
	}
	if got := value("relay_queue_jobs", "state", "retryable"); got != 1 {
		t.Errorf("queue depth: %v retryable, want 1", got)
	}
	if got := value("relay_queue_jobs", "state", "available"); got != 0 {
		t.Errorf("queue depth: %v available, want 0", got)
	}

	if _, _, err := e.relay.RecordCallCompleted(ctx, CallCompleted{CallSID: "CA_done", From: "+14158675309", To: "+18005551212", At: e.clock.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := value("store_commit_batch_size", "queue", telemetry.CommitCallCompleted); got != 1 {
		t.Errorf("call.completed commits = %v, want 1", got)
	}

	seed := make([]byte, 32)
	_, _ = rand.Read(seed)
	signer, err := NewAuditSigner(seed)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := e.relay.Checkpointer(signer, CheckpointPolicy{Poll: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	signed, err := cp.Checkpoint(ctx)
	if err != nil || len(signed) == 0 {
		t.Fatalf("checkpoint: %d signed, %v", len(signed), err)
	}
	if got := value("audit_checkpoints_written_total"); got != float64(len(signed)) {
		t.Errorf("checkpoints written = %v, want %d", got, len(signed))
	}
}
