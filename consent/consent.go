// Package consent holds ConsentLine's domain: what a consent decision is, how
// a caller's answer decides it (the words themselves are read by
// consent/answer), and how a decision is recorded exactly once per call and
// disclosure script.
//
// The storage and locking backends live in their own packages behind the
// Store and Locker interfaces declared here (SQLite or PostgreSQL; in-process
// or Redis), so this package depends on neither.
package consent

import (
	"context"
	"errors"
	"time"

	"github.com/consentline/consentline/consent/answer"
)

// Decision is the recorded outcome of a consent conversation.
type Decision string

const (
	Granted    Decision = "granted"
	Declined   Decision = "declined"
	NoResponse Decision = "no_response"
)

// Intent is what a single answer means, before thresholds and retries are
// applied.
type Intent string

const (
	Agree    Intent = "agree"
	Decline  Intent = "decline"
	Unclear  Intent = "unclear"
	NoIntent Intent = "" // nothing was said or pressed
)

// intentOf is the Intent of a classified transcript. The classifier has its
// own type rather than returning Intent because Intent belongs to the domain
// (scripts map keys to it, Decision is defined on it) and the classifier must
// not import the domain that imports it.
func intentOf(m answer.Meaning) Intent {
	switch m {
	case answer.Agree:
		return Agree
	case answer.Decline:
		return Decline
	case answer.None:
		return NoIntent
	}
	return Unclear
}

// Decision maps a clear intent to its decision; ok is false for Unclear and
// NoIntent.
func (i Intent) Decision() (d Decision, ok bool) {
	switch i {
	case Agree:
		return Granted, true
	case Decline:
		return Declined, true
	}
	return "", false
}

// Source says which channel produced the answer a record was decided from.
// The values are the relay event's `source` field (CONTRACT.md §3).
type Source string

const (
	SourceSpeech         Source = "speech"
	SourceDTMF           Source = "dtmf"
	SourceMediaStream    Source = "media_stream"
	SourceStatusCallback Source = "status_callback"
)

// Timing says where a record's disclosure timings (DisclosureHeardMS,
// BargeIn, MustHearComplete) come from. The values are the relay event's
// `timing` field (CONTRACT.md §3).
type Timing string

const (
	// TimingMeasured: measured on the call's media stream.
	TimingMeasured Timing = "measured"
	// TimingEstimated: no stream audio reached ConsentLine for the call;
	// the timings are an estimate from the script's speaking time and the
	// webhooks' arrival.
	TimingEstimated Timing = "estimated"
)

// ScriptRef identifies the exact disclosure text a caller heard.
type ScriptRef struct {
	ID       string `json:"id"`
	Version  string `json:"version"`
	Language string `json:"language"`
	// SHA256 is the hex SHA-256 of the exact text spoken (see twiml.Script.DisclosureText).
	SHA256 string `json:"sha256"`
}

// Sealed is a value encrypted at rest: a JWE compact string
// (dir/A256GCM, kid in the protected header). The zero value means "absent".
// It never holds plaintext.
type Sealed string

// Record is one consent decision: exactly one exists per (CallSID, Script.ID).
type Record struct {
	// ID is the record's id; the relay event for it carries the same id.
	ID      string
	CallSID string
	Script  ScriptRef

	Decision Decision
	Source   Source
	// Confidence is the recognizer's confidence in [0,1]; nil for DTMF and
	// for decisions not taken from an answer (no_response).
	Confidence *float64

	// BargeIn is true when the caller answered before the interruptible part
	// of the disclosure had finished playing; DisclosureHeardMS is how much of
	// the disclosure had played by then.
	BargeIn           bool
	DisclosureHeardMS int64
	// MustHearComplete is whether the must-hear part of the disclosure had
	// finished before the answer began; Timing says whether these three
	// were measured or estimated.
	MustHearComplete bool
	Timing           Timing

	// PatientRef is a keyed pseudonym of the caller's number, stable across
	// encryption-key rotation.
	PatientRef string
	// From, To and Transcript are PHI and only ever held sealed.
	From       Sealed
	To         Sealed
	Transcript Sealed

	DecidedAt time.Time
}

// StartedCall is a call that reached /voice/incoming, kept so that a call
// whose status callback was lost can still be closed as no_response. Script
// is the disclosure the caller is hearing (updated when they choose another
// language). From and To are sealed.
type StartedCall struct {
	CallSID   string
	Script    ScriptRef
	From, To  Sealed
	StartedAt time.Time
}

var (
	// ErrNotFound is returned by Store.Get when no record exists.
	ErrNotFound = errors.New("consent: record not found")
	// ErrLockTimeout is returned by a Locker that could not acquire a lock
	// before its context ended.
	ErrLockTimeout = errors.New("consent: per-call lock not acquired in time")
	// ErrLockBusy is returned by Locker.TryAcquire when another owner holds
	// the lock.
	ErrLockBusy = errors.New("consent: per-call lock held by another delivery")
)

// Store persists consent records. Implementations: consent/sqlitestore (the
// embedded default) and consent/pgstore (PostgreSQL).
type Store interface {
	// Record inserts rec unless a record for (rec.CallSID, rec.Script.ID)
	// already exists. It returns the record now stored (rec, or the earlier
	// one) and whether this call created it. The store's unique constraint is
	// the last guard of exactly-once: two concurrent calls never both report
	// created.
	Record(ctx context.Context, rec Record) (stored Record, created bool, err error)
	// Get returns the record for (callSID, scriptID) or ErrNotFound.
	Get(ctx context.Context, callSID, scriptID string) (Record, error)
	// Secret returns the sealed secret stored under name, storing
	// generate()'s value first when there is none (first writer wins, so
	// every instance sees the same value). Used for the patient_ref
	// pseudonym key, which must outlive encryption-key rotation.
	Secret(ctx context.Context, name string, generate func() (Sealed, error)) (Sealed, error)
	// CallStarted stores c, or updates the script of the call already
	// stored under c.CallSID (the caller chose another language).
	CallStarted(ctx context.Context, c StartedCall) error
	// StartedCall returns the call stored by CallStarted, or ErrNotFound.
	StartedCall(ctx context.Context, callSID string) (StartedCall, error)
	// Unsettled returns up to limit calls started before startedBefore
	// that have no consent record, oldest first.
	Unsettled(ctx context.Context, startedBefore time.Time, limit int) ([]StartedCall, error)
	// SaveStreamMeasurement stores m under (m.CallSID, m.ScriptID),
	// replacing an earlier measurement's stream fields but keeping its
	// MustHearEndedAt.
	SaveStreamMeasurement(ctx context.Context, m StreamMeasurement) error
	// MustHearEnded stores when the must-hear part of scriptID's disclosure
	// ended on callSID, whether or not the stream has saved anything yet.
	MustHearEnded(ctx context.Context, callSID, scriptID string, at time.Time) error
	// StreamMeasurement returns the measurement of (callSID, scriptID) or
	// ErrNotFound.
	StreamMeasurement(ctx context.Context, callSID, scriptID string) (StreamMeasurement, error)
	// StreamMeasurements returns every measurement of callSID, by script.
	StreamMeasurements(ctx context.Context, callSID string) ([]StreamMeasurement, error)
	// Ping reports whether the store is reachable (for /readyz).
	Ping(ctx context.Context) error
	Close() error
}

// Locker serializes deciding per call. Implementations: consent/memlock
// (in-process) and consent/redislock (shared by all instances).
type Locker interface {
	// Acquire blocks until it holds the lock named key or ctx ends (then it
	// returns an error wrapping ErrLockTimeout or the backend's error).
	// The returned context is derived from ctx and is canceled when the lock
	// is lost (e.g. its TTL lapsed and another owner took it), so work done
	// under it stops instead of committing. release frees the lock if this
	// owner still holds it; it is safe to call more than once.
	Acquire(ctx context.Context, key string) (held context.Context, release func(), err error)
	// TryAcquire is Acquire without the wait: when another owner holds key
	// it returns an error wrapping ErrLockBusy at once.
	TryAcquire(ctx context.Context, key string) (held context.Context, release func(), err error)
	// Wait blocks until key is not held (its holder released it, or its
	// lease lapsed) or ctx ends; it does not take the lock.
	Wait(ctx context.Context, key string) error
}
