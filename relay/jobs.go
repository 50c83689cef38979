package relay

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/riverqueue/river"
)

// QueueName is the River queue deliveries run on.
const QueueName = "relay"

// DeliverKind is the River job kind of a delivery.
const DeliverKind = "relay.deliver"

// DeliverArgs is a delivery job: it names the event, whose body is loaded
// from the audit log when the job runs, so the job row itself holds no PHI
// and a delivery always sends exactly what the audit chain recorded.
type DeliverArgs struct {
	EventID string `json:"event_id"`
}

// Kind implements river.JobArgs.
func (DeliverArgs) Kind() string { return DeliverKind }

// InsertOpts fixes the queue and the attempt budget at insert time, whichever
// client inserts (the outbox's insert-only one or the CLI's replay).
func (DeliverArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueName, MaxAttempts: MaxDeliveryAttempts()}
}

// deliverWorker posts one event per job. Its outcome maps onto River: nil
// is delivered; a Retry outcome is a returned error, rescheduled by
// NextRetry; a Dead outcome is river.JobCancel, River's dead letter state,
// which `relay list --failed` shows and `relay replay` re-queues.
type deliverWorker struct {
	river.WorkerDefaults[DeliverArgs]
	r *Relay

	// retryAfter carries a receiver's Retry-After from Work to the
	// NextRetry call River makes right after it for the same job, because
	// NextRetry does not see the error Work returned.
	retryAfter sync.Map // job id -> time.Duration
}

func (w *deliverWorker) Work(ctx context.Context, job *river.Job[DeliverArgs]) error {
	w.retryAfter.Delete(job.ID)
	e, err := w.r.b.entry(ctx, job.Args.EventID)
	if errors.Is(err, ErrEventNotFound) {
		return river.JobCancel(err)
	}
	if err != nil {
		return err // the database: worth retrying
	}
	body, err := deliveryBody(e.Event, w.r.cfg.PII)
	if err != nil {
		return river.JobCancel(err)
	}
	a := w.r.zapier.Deliver(ctx, e.EventID, body)
	w.r.log.InfoContext(ctx, "relay delivery",
		slog.String("event_id", e.EventID), slog.String("type", e.Type),
		slog.Int("attempt", job.Attempt), slog.Int("max_attempts", job.MaxAttempts),
		slog.String("outcome", a.Outcome.String()), slog.Int("status", a.Status))
	switch a.Outcome {
	case Delivered:
		return nil
	case Dead:
		return river.JobCancel(a.Err)
	}
	if a.RetryAfter > 0 && job.Attempt < job.MaxAttempts {
		w.retryAfter.Store(job.ID, a.RetryAfter)
	}
	return a.Err
}

// NextRetry applies the relay's Backoff, honouring Retry-After.
func (w *deliverWorker) NextRetry(job *river.Job[DeliverArgs]) time.Time {
	var after time.Duration
	if v, ok := w.retryAfter.LoadAndDelete(job.ID); ok {
		after = v.(time.Duration)
	}
	// job.Errors does not yet hold the failure being scheduled, hence +1;
	// counting errors rather than attempts keeps snoozes out of it.
	return w.r.backoff.NextRetryAfter(len(job.Errors)+1, after)
}

// Timeout leaves River's job context a little longer than the HTTP attempt,
// so the attempt's own timeout (with its clear error) fires first.
func (w *deliverWorker) Timeout(*river.Job[DeliverArgs]) time.Duration {
	return w.r.zapier.timeout() + 5*time.Second
}

func (z *Zapier) timeout() time.Duration {
	if z.Timeout > 0 {
		return z.Timeout
	}
	return DefaultAttemptTimeout
}

// MaxDeliveryAttempts is the attempt budget every delivery job gets: enough
// for DefaultBackoff's retries to span at least 24 hours.
func MaxDeliveryAttempts() int { return DefaultBackoff().MaxAttempts() }
