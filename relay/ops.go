package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
)

// Delivery is one delivery job as the operator commands show it. It holds
// no PHI: the event id, River's bookkeeping and the last error, which is at
// most a status line.
type Delivery struct {
	JobID       int64
	EventID     string
	State       string // River job state: cancelled (dead letter), discarded (retries exhausted), retryable, ...
	Attempt     int
	MaxAttempts int
	LastError   string
	LastAt      time.Time // when the last error happened
	NextAt      time.Time // scheduled_at: next attempt for retryable jobs
}

func deliveries(rows []*rivertype.JobRow) []Delivery {
	out := make([]Delivery, 0, len(rows))
	for _, j := range rows {
		var args DeliverArgs
		_ = json.Unmarshal(j.EncodedArgs, &args)
		d := Delivery{JobID: j.ID, EventID: args.EventID, State: string(j.State), Attempt: j.Attempt,
			MaxAttempts: j.MaxAttempts, NextAt: j.ScheduledAt}
		if n := len(j.Errors); n > 0 {
			d.LastError, d.LastAt = j.Errors[n-1].Error, j.Errors[n-1].At
		}
		out = append(out, d)
	}
	return out
}

// Failed job states. Cancelled is the dead letter state (a 4xx); discarded
// means the ≥24 h of retries ran out; retryable is failing but still being
// retried.
var failedStates = []rivertype.JobState{rivertype.JobStateCancelled, rivertype.JobStateDiscarded, rivertype.JobStateRetryable}

// ListFailed lists deliveries that are dead-lettered, exhausted or
// currently failing, oldest first (`relay list --failed`). A failed job
// whose event has since been replayed is left out: only an event's latest
// delivery says whether it still needs attention.
func (r *Relay) ListFailed(ctx context.Context, limit int) ([]Delivery, error) {
	if limit <= 0 {
		limit = 100
	}
	p := river.NewJobListParams().Kinds(DeliverKind).States(failedStates...).First(limit)
	failed, err := r.b.list(ctx, p)
	if err != nil {
		return nil, err
	}
	out := failed[:0]
	for _, d := range failed {
		all, err := r.deliveriesFor(ctx, d.EventID)
		if err != nil {
			return nil, err
		}
		if len(all) > 0 && all[len(all)-1].JobID == d.JobID {
			out = append(out, d)
		}
	}
	return out, nil
}

// deliveriesFor lists the delivery jobs of one event. `args ->> 'event_id'`
// reads the same on PostgreSQL (jsonb) and SQLite (JSON text).
func (r *Relay) deliveriesFor(ctx context.Context, eventID string) ([]Delivery, error) {
	p := river.NewJobListParams().Kinds(DeliverKind).
		Where("args ->> 'event_id' = @event_id", river.NamedArgs{"event_id": eventID}).First(100)
	return r.b.list(ctx, p)
}

// ErrAlreadyQueued is returned by Replay when the event has a delivery that
// is still pending.
var ErrAlreadyQueued = errors.New("relay: a delivery for this event is already queued")

// Replay queues a fresh delivery of an audited event (`relay replay ID`),
// with a full retry budget, whatever happened to earlier ones: a dead
// letter, exhausted retries, or a delivery the clinic wants again. It
// refuses while another delivery of the event is still queued or running.
func (r *Relay) Replay(ctx context.Context, eventID string) (jobID int64, err error) {
	if !r.Delivering() {
		return 0, errors.New("relay: ZAPIER_WEBHOOK_URL is not set; nothing to replay to")
	}
	if _, err := r.b.entry(ctx, eventID); err != nil {
		return 0, err
	}
	ds, err := r.deliveriesFor(ctx, eventID)
	if err != nil {
		return 0, err
	}
	for _, d := range ds {
		switch rivertype.JobState(d.State) {
		case rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRetryable,
			rivertype.JobStateRunning, rivertype.JobStateScheduled:
			return d.JobID, ErrAlreadyQueued
		}
	}
	return r.b.enqueue(ctx, eventID)
}

// Deliveries lists every delivery job of an event, oldest first.
func (r *Relay) Deliveries(ctx context.Context, eventID string) ([]Delivery, error) {
	return r.deliveriesFor(ctx, eventID)
}

// Event returns an event's audit entry.
func (r *Relay) Event(ctx context.Context, eventID string) (AuditEntry, error) {
	return r.b.entry(ctx, eventID)
}

// VerifyAudit walks every audit chain, ordered by chain and seq, and
// checks every signed checkpoint against it (VerifyAuditSigned, trusting
// any key whose signature verifies; `audit verify` also names the keys to
// trust). A broken chain is a *ChainError naming the first bad entry's
// chain, seq and event id, a bad checkpoint a *CheckpointError; the result
// then covers what was verified before it.
func (r *Relay) VerifyAudit(ctx context.Context) (VerifyResult, error) {
	res, err := r.VerifyAuditSigned(ctx, VerifyOptions{})
	return res.VerifyResult, err
}

// Decrypt opens a value for the `decrypt VALUE` command: a single JWE
// compact string gives its plaintext (a bound value is opened for the place
// its own authenticated header names: there is nothing else to check it
// against); a whole relay event (JSON) gives the event with from, to and
// transcript replaced by their plaintexts, each checked to be bound to this
// event (ValueBinding: its call_sid, disclosure id or event id, and the
// member it sits in), so a value pasted in from another event or record
// fails, naming the field and kid. Values sealed before bindings existed
// open either way. The result is PHI: the
// caller prints it to the operator's terminal and nowhere else.
func Decrypt(k *pii.Keyring, value string) (string, error) {
	value = strings.TrimSpace(value)
	if !strings.HasPrefix(value, "{") {
		pt, _, err := k.OpenAny(consent.Sealed(value))
		return pt, err
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(value), &m); err != nil {
		return "", errors.New("relay: decrypt: neither a JWE value nor a JSON event")
	}
	var ev Event // the clear fields that say where the values belong
	if err := json.Unmarshal([]byte(value), &ev); err != nil {
		return "", errors.New("relay: decrypt: the JSON is not a relay event")
	}
	for _, f := range []string{consent.FieldFrom, consent.FieldTo, consent.FieldTranscript} {
		s, ok := m[f].(string)
		if !ok || s == "" {
			continue
		}
		pt, err := k.OpenFor(ValueBinding(ev, f), consent.Sealed(s))
		if err != nil {
			return "", fmt.Errorf("relay: decrypt %s: %w", f, err)
		}
		m[f] = pt
	}
	out, err := json.MarshalIndent(m, "", "  ")
	return string(out), err
}
