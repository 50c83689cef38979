package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
//
// Waiting is a snooze (river.JobSnooze), never a held worker or a failure:
// a delivery whose turn at the hook is more than MaxPaceWait away, one the
// receiver answered 429 or 5xx with a Retry-After, and one still running
// when the relay stops (handed back to the queue, available at once). In
// River v0.51.2 a snooze does not use up an attempt (River decrements the
// attempt it had counted, leaves max_attempts alone, records no error and
// counts snoozes in the job's metadata as "snoozes"), so the attempt budget
// and the backoff (len(job.Errors)) count only real failures; the
// snoozes' own bound is maxRetryAfterSnoozes.
type deliverWorker struct {
	river.WorkerDefaults[DeliverArgs]
	r *Relay
}

// maxRetryAfterSnoozes: a delivery the receiver keeps answering with a
// Retry-After is dead-lettered once it has been snoozed this often and is
// older than the backoff's span (24 h), the time a failing delivery is
// retried; either alone could be a healthy backlog meeting a rate limit.
const maxRetryAfterSnoozes = 100

func (w *deliverWorker) Work(ctx context.Context, job *river.Job[DeliverArgs]) error {
	err := w.work(ctx, job)
	var cancel *river.JobCancelError
	var snooze *river.JobSnoozeError
	if err != nil && !errors.As(err, &cancel) && !errors.As(err, &snooze) && job.Attempt >= job.MaxAttempts {
		w.r.cfg.Metrics.RelayDeadLetter(telemetry.DeadExhausted)
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
		return handBack(ctx, err) // the database: worth retrying
	}
	body, err := deliveryBody(e.Event, w.r.cfg.PII)
	if err != nil {
		w.r.cfg.Metrics.RelayDeadLetter(telemetry.DeadInvalid)
		return river.JobCancel(err)
	}
	if snooze, err := w.r.pace.wait(ctx, MaxPaceWait); err != nil {
		return handBack(ctx, err)
	} else if snooze > 0 {
		return river.JobSnooze(snooze)
	}
	a := w.r.zapier.Deliver(ctx, e.EventID, body)
	w.r.cfg.Metrics.RelayAttempt(a.Outcome.String())
	w.r.log.InfoContext(ctx, "relay delivery",
		slog.String("event_id", e.EventID), slog.String("type", e.Type),
		slog.Int("attempt", job.Attempt), slog.Int("max_attempts", job.MaxAttempts),
		slog.String("outcome", a.Outcome.String()), slog.Int("status", a.Status),
		slog.Duration("retry_after", a.RetryAfter))
	switch a.Outcome {
	case Delivered:
		// Real time since River queued the job (its row's created_at).
		w.r.cfg.Metrics.RelayDelivered(time.Since(job.CreatedAt))
		return nil
	case Dead:
		w.r.cfg.Metrics.RelayDeadLetter(telemetry.DeadRejected)
		return river.JobCancel(a.Err)
	}
	if a.RetryAfter > 0 {
		d := w.r.backoff.capRetryAfter(a.RetryAfter)
		w.r.pace.pause(d)
		if snoozes(job.Metadata) >= maxRetryAfterSnoozes && w.r.backoff.now().Sub(job.CreatedAt) > w.r.backoff.Span {
			return river.JobCancel(fmt.Errorf("%w, with Retry-After, for over %s and %d snoozes: given up", a.Err, w.r.backoff.Span, maxRetryAfterSnoozes))
		}
		return river.JobSnooze(d)
	}
	return handBack(ctx, a.Err)
}

// handBack turns a failure caused by the relay stopping (River cancels the
// job's context in StopAndCancel) into a snooze of 0: the job is available
// again at once, to this instance's successor or another, and the cut-off
// attempt is not counted. Any other failure is returned as it is.
func handBack(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return river.JobSnooze(0)
	}
	return err
}

// snoozes is River's count of a job's snoozes, kept in its metadata.
func snoozes(metadata []byte) int {
	var m struct {
		Snoozes int `json:"snoozes"`
	}
	_ = json.Unmarshal(metadata, &m)
	return m.Snoozes
}

// NextRetry applies the relay's Backoff after a failure. A job whose
// attempt began at least rescueHorizon ago is one River's rescuer found
// still running, its process gone (a job this process works fails within
// its job timeout): the receiver did not fail it and the rescue window has
// already spaced it out, so it is retried at once rather than after a
// further backoff step.
func (w *deliverWorker) NextRetry(job *river.Job[DeliverArgs]) time.Time {
	now := w.r.backoff.now()
	if job.AttemptedAt != nil && now.Sub(*job.AttemptedAt) >= w.rescueHorizon() {
		return now
	}
	// job.Errors does not yet hold the failure being scheduled, hence +1;
	// snoozes add no errors, so they stay out of it.
	return w.r.backoff.NextRetryAfter(len(job.Errors)+1, 0)
}

// rescueHorizon lies between the job timeout (the longest a worked attempt
// runs) and RescueAfter (the shortest a rescued one ran), halfway, so that
// neither a slow attempt nor some clock skew between the database and this
// process is taken for the other.
func (w *deliverWorker) rescueHorizon() time.Duration {
	jt := JobTimeout(w.r.zapier.timeout())
	return jt + (w.r.cfg.RescueAfter-jt)/2
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
