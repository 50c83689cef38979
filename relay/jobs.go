package relay

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/riverqueue/river"

	"github.com/consentline/consentline/internal/telemetry"
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

	// worked carries a receiver's Retry-After (or 0) from Work to the
	// NextRetry call River makes right after it for the same job, because
	// NextRetry does not see the error Work returned. A job with no entry
	// was not worked by this process: River's rescuer is retrying a
	// delivery left running by a process that died (see NextRetry).
	worked sync.Map // job id -> time.Duration
}

func (w *deliverWorker) Work(ctx context.Context, job *river.Job[DeliverArgs]) error {
	w.worked.Store(job.ID, time.Duration(0))
	err := w.work(ctx, job)
	var cancel *river.JobCancelError
	if err != nil && !errors.As(err, &cancel) && job.Attempt >= job.MaxAttempts {
		w.r.cfg.Metrics.RelayDeadLetter(telemetry.DeadExhausted)
	}
	if err == nil || errors.As(err, &cancel) || job.Attempt >= job.MaxAttempts {
		// Delivered, dead-lettered or out of attempts: River makes no
		// NextRetry call. (A panic leaves the entry for the one it makes.)
		w.worked.Delete(job.ID)
	}
	return err
}

func (w *deliverWorker) work(ctx context.Context, job *river.Job[DeliverArgs]) error {
	e, err := w.r.b.entry(ctx, job.Args.EventID)
	if errors.Is(err, ErrEventNotFound) {
		w.r.cfg.Metrics.RelayDeadLetter(telemetry.DeadInvalid)
		return river.JobCancel(err)
	}
	if err != nil {
		return err // the database: worth retrying
	}
	body, err := deliveryBody(e.Event, w.r.cfg.PII)
	if err != nil {
		w.r.cfg.Metrics.RelayDeadLetter(telemetry.DeadInvalid)
		return river.JobCancel(err)
	}
	a := w.r.zapier.Deliver(ctx, e.EventID, body)
	w.r.cfg.Metrics.RelayAttempt(a.Outcome.String())
	w.r.log.InfoContext(ctx, "relay delivery",
		slog.String("event_id", e.EventID), slog.String("type", e.Type),
		slog.Int("attempt", job.Attempt), slog.Int("max_attempts", job.MaxAttempts),
		slog.String("outcome", a.Outcome.String()), slog.Int("status", a.Status))
	switch a.Outcome {
	case Delivered:
		// Real time since River queued the job (its row's created_at).
		w.r.cfg.Metrics.RelayDelivered(time.Since(job.CreatedAt))
		return nil
	case Dead:
		w.r.cfg.Metrics.RelayDeadLetter(telemetry.DeadRejected)
		return river.JobCancel(a.Err)
	}
	if a.RetryAfter > 0 && job.Attempt < job.MaxAttempts {
		w.worked.Store(job.ID, a.RetryAfter)
	}
	return a.Err
}

// NextRetry applies the relay's Backoff, honouring Retry-After. A job this
// process did not just work is one River's rescuer found still running
// after RescueAfter, its process gone: the receiver did not fail it, the
// rescue window has already spaced it out, so it is retried at once rather
// than after a further backoff step.
func (w *deliverWorker) NextRetry(job *river.Job[DeliverArgs]) time.Time {
	v, worked := w.worked.LoadAndDelete(job.ID)
	if !worked {
		return w.r.backoff.now()
	}
	// job.Errors does not yet hold the failure being scheduled, hence +1;
	// counting errors rather than attempts keeps snoozes out of it.
	return w.r.backoff.NextRetryAfter(len(job.Errors)+1, v.(time.Duration))
}

// Timeout is JobTimeout: River's job context lives a little longer than the
// HTTP attempt.
func (w *deliverWorker) Timeout(*river.Job[DeliverArgs]) time.Duration {
	return JobTimeout(w.r.zapier.timeout())
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
