package consent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/singleflight"

	"github.com/consentline/consentline/consent/answer"
	"github.com/consentline/consentline/internal/telemetry"
)

// DefaultThreshold is CONSENT_CONFIDENCE_THRESHOLD's default: speech
// recognized with less confidence never decides.
const DefaultThreshold = 0.75

// Config wires a Service. Seal and PatientRef are functions rather than an
// interface because there is one implementation (internal/pii) and this
// package must not import it.
type Config struct {
	Store  Store
	Locker Locker
	// Threshold is the minimum recognizer confidence for speech to decide.
	Threshold float64
	// Seal encrypts one PHI value for storage, bound to the place it is
	// stored (pii.Keyring.SealFor); Open decrypts one read from the place
	// named, and must fail for a value bound elsewhere (pii.Keyring.OpenFor).
	// Both take the place so that no caller can seal or open a value
	// without saying where it belongs.
	Seal func(where Binding, plaintext string) (Sealed, error)
	Open func(where Binding, sealed Sealed) (string, error)
	// PatientRef pseudonymizes the caller's number.
	PatientRef func(number string) string
	// Now defaults to time.Now.
	Now func() time.Time
	// Metrics, when set, counts the decisions recorded, the per-call lock
	// found busy and the time waited on it, and the records that found a
	// decision already stored (nil: none).
	Metrics *telemetry.Metrics
}

// Service classifies answers and records decisions exactly once per call
// and script: a per-call lock serializes deciding, and the store's unique
// constraint is the last guard.
type Service struct {
	cfg Config
	// deciding coalesces one instance's concurrent deliveries of the same
	// call and script (Twilio's retries, a load balancer's duplicates) into
	// one lock acquisition and one insert: the first delivery decides and
	// the others share its record, instead of queueing on the per-call lock
	// behind it and each taking a turn at the database.
	deciding singleflight.Group
}

// NewService returns a Service; it panics on a missing dependency, which is
// a programming error, not bad input.
func NewService(cfg Config) *Service {
	if cfg.Store == nil || cfg.Locker == nil || cfg.Seal == nil || cfg.Open == nil || cfg.PatientRef == nil {
		panic("consent: NewService needs Store, Locker, Seal, Open and PatientRef")
	}
	if cfg.Threshold <= 0 {
		cfg.Threshold = DefaultThreshold
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg}
}

// Threshold is the confidence below which speech never decides.
func (s *Service) Threshold() float64 { return s.cfg.Threshold }

// Call identifies the call and the disclosure an answer belongs to. From and
// To are plaintext here and sealed before they are stored.
type Call struct {
	CallSID string
	Script  ScriptRef
	From    string
	To      string
}

// Answer is one final answer from the caller: a recognizer's final speech
// result or a key. Partial results never reach here: a prefix of what the
// caller is saying ("yes, can you repeat that? no, I do not agree") is no
// answer.
type Answer struct {
	Call
	Source Source
	// Intent is set by the caller for DTMF (the script maps keys); for
	// speech it is left empty and the transcript is classified.
	Intent     Intent
	Transcript string
	// Confidence is the recognizer's confidence in [0,1]; nil when the
	// recognizer gave none.
	Confidence *float64
	// Heard says where in the disclosure the answer came.
	Heard Heard
}

// Heard is how much of the disclosure the caller had heard when their
// answer began (or the call ended), and how that is known.
type Heard struct {
	// MS is how much of the disclosure had played.
	MS int64
	// BargeIn: the answer began while the disclosure was still playing.
	BargeIn bool
	// MustHearComplete: the must-hear part had finished before it.
	MustHearComplete bool
	// Timing: measured on the media stream, or estimated.
	Timing Timing
}

// Outcome is what Decide concluded.
type Outcome struct {
	// Intent is what this answer meant after the confidence threshold.
	Intent Intent
	// NeedsConfirmation is true when speech was clear but came without a
	// confidence: the caller is asked to confirm with a key rather than the
	// service guessing.
	NeedsConfirmation bool
	// Recorded is true when a record exists for the call (this answer's or
	// an earlier one's); Record is then that record and Created says whether
	// this answer created it.
	Recorded bool
	Created  bool
	Record   Record
}

// Decide classifies an answer and, when it is clear enough, records the
// decision. An answer that does not decide still reports a decision recorded
// earlier (a partial result that decided first, a retry), so the caller hears
// the read-back of the one decision that counts.
func (s *Service) Decide(ctx context.Context, a Answer) (Outcome, error) {
	out := Outcome{Intent: a.Intent}
	if a.Source != SourceDTMF {
		out.Intent = intentOf(answer.Classify(a.Script.Language, a.Transcript))
		switch {
		case out.Intent == NoIntent || out.Intent == Unclear:
		case a.Confidence == nil && a.Source == SourceSpeech:
			out.NeedsConfirmation = true
		case a.Confidence == nil || *a.Confidence < s.cfg.Threshold:
			out.Intent = Unclear
		}
	}
	decision, clear := out.Intent.Decision()
	if !clear || out.NeedsConfirmation {
		rec, err := s.cfg.Store.Get(ctx, a.CallSID, a.Script.ID)
		switch {
		case errors.Is(err, ErrNotFound):
			return out, nil
		case err != nil:
			return out, fmt.Errorf("looking up earlier decision: %w", err)
		}
		out.Recorded, out.Record = true, rec
		return out, nil
	}
	rec, created, err := s.record(ctx, a, decision)
	if err != nil {
		return out, err
	}
	out.Recorded, out.Created, out.Record = true, created, rec
	return out, nil
}

// CallStarted remembers that call reached the disclosure, and which script
// it hears, so that it can be closed as no_response even if its status
// callback is lost (see Unsettled). Calling it again for the same call
// updates the script (the caller chose another language).
func (s *Service) CallStarted(ctx context.Context, c Call) error {
	sc := StartedCall{CallSID: c.CallSID, Script: c.Script, StartedAt: s.cfg.Now().UTC()}
	var err error
	if sc.From, err = s.cfg.Seal(StartedCallBinding(c.CallSID, FieldFrom), c.From); err != nil {
		return fmt.Errorf("sealing started call: %w", err)
	}
	if sc.To, err = s.cfg.Seal(StartedCallBinding(c.CallSID, FieldTo), c.To); err != nil {
		return fmt.Errorf("sealing started call: %w", err)
	}
	return s.cfg.Store.CallStarted(ctx, sc)
}

// StartedScript returns the script the call was last known to hear (the
// language the caller chose), or ok false when the call was not remembered.
func (s *Service) StartedScript(ctx context.Context, callSID string) (ScriptRef, bool, error) {
	c, err := s.cfg.Store.StartedCall(ctx, callSID)
	switch {
	case errors.Is(err, ErrNotFound):
		return ScriptRef{}, false, nil
	case err != nil:
		return ScriptRef{}, false, err
	}
	return c.Script, true, nil
}

// StartedCall returns the call remembered by CallStarted, numbers opened,
// or ok false when it was not remembered. The media stream decides for it:
// a stream's start message carries no numbers.
func (s *Service) StartedCall(ctx context.Context, callSID string) (Call, bool, error) {
	sc, err := s.cfg.Store.StartedCall(ctx, callSID)
	switch {
	case errors.Is(err, ErrNotFound):
		return Call{}, false, nil
	case err != nil:
		return Call{}, false, err
	}
	c, err := s.openStarted(sc)
	return c, err == nil, err
}

func (s *Service) openStarted(sc StartedCall) (Call, error) {
	c := Call{CallSID: sc.CallSID, Script: sc.Script}
	var err error
	if c.From, err = s.cfg.Open(StartedCallBinding(sc.CallSID, FieldFrom), sc.From); err != nil {
		return Call{}, fmt.Errorf("opening started call %s: %w", sc.CallSID, err)
	}
	if c.To, err = s.cfg.Open(StartedCallBinding(sc.CallSID, FieldTo), sc.To); err != nil {
		return Call{}, fmt.Errorf("opening started call %s: %w", sc.CallSID, err)
	}
	return c, nil
}

// Unsettled returns up to limit calls that started before startedBefore and
// have no decision, with their numbers decrypted for RecordNoResponse.
func (s *Service) Unsettled(ctx context.Context, startedBefore time.Time, limit int) ([]Call, error) {
	started, err := s.cfg.Store.Unsettled(ctx, startedBefore, limit)
	if err != nil {
		return nil, err
	}
	calls := make([]Call, 0, len(started))
	for _, sc := range started {
		c, err := s.openStarted(sc)
		if err != nil {
			return nil, err
		}
		calls = append(calls, c)
	}
	return calls, nil
}

// RecordNoResponse records that the call ended, or the caller ran out of
// re-prompts, without a decision. It does nothing when a decision exists.
func (s *Service) RecordNoResponse(ctx context.Context, c Call, source Source, heard Heard) (Record, bool, error) {
	return s.record(ctx, Answer{Call: c, Source: source, Heard: heard}, NoResponse)
}

// recorded is what one (possibly shared) record call produced.
type recorded struct {
	rec     Record
	created bool
}

// record stores one decision, coalescing concurrent deliveries of the same
// call on this instance: only the first runs recordLocked, and only its
// caller may report the record as created by it.
func (s *Service) record(ctx context.Context, a Answer, d Decision) (Record, bool, error) {
	leader := false
	v, err, _ := s.deciding.Do(a.CallSID+"\x00"+a.Script.ID, func() (any, error) {
		leader = true
		rec, created, err := s.recordLocked(ctx, a, d)
		return recorded{rec, created}, err
	})
	if err != nil {
		return Record{}, false, err
	}
	r := v.(recorded)
	if r.created && leader {
		s.cfg.Metrics.Decision(string(r.rec.Decision), string(r.rec.Source), string(r.rec.Timing))
	}
	return r.rec, r.created && leader, nil
}

// recordLocked stores one decision under the per-call lock. Across
// instances the lock lets one delivery decide at a time. A delivery that
// finds it taken does not queue to decide after the holder: it waits for
// the holder to finish and reads the holder's decision back. Only if the
// holder recorded nothing (it failed, or its deadline passed) does it try
// to decide itself.
func (s *Service) recordLocked(ctx context.Context, a Answer, d Decision) (Record, bool, error) {
	key := "call:" + a.CallSID
	for {
		held, release, err := s.cfg.Locker.TryAcquire(ctx, key)
		if err == nil {
			defer release()
			return s.insert(held, a, d)
		}
		if !errors.Is(err, ErrLockBusy) {
			return Record{}, false, fmt.Errorf("per-call lock: %w", err)
		}
		s.cfg.Metrics.LockBusy()
		waitStart := time.Now() // real time, not cfg.Now: this process's wait
		err = s.cfg.Locker.Wait(ctx, key)
		s.cfg.Metrics.LockWaited(time.Since(waitStart))
		if err != nil {
			return Record{}, false, fmt.Errorf("per-call lock: waiting for another delivery's decision: %w", err)
		}
		rec, err := s.cfg.Store.Get(ctx, a.CallSID, a.Script.ID)
		switch {
		case err == nil:
			return rec, false, nil
		case !errors.Is(err, ErrNotFound):
			return Record{}, false, fmt.Errorf("reading another delivery's decision: %w", err)
		}
	}
}

// insert builds and stores the record; held is the per-call lock's context.
func (s *Service) insert(held context.Context, a Answer, d Decision) (Record, bool, error) {
	// No lookup first: a new decision (the common case) is then one
	// transaction, and Store.Record returns the decision already stored
	// when there is one, so it still wins.
	rec := Record{
		ID:                uuid.NewString(),
		CallSID:           a.CallSID,
		Script:            a.Script,
		Decision:          d,
		Source:            a.Source,
		Confidence:        a.Confidence,
		BargeIn:           a.Heard.BargeIn,
		DisclosureHeardMS: a.Heard.MS,
		MustHearComplete:  a.Heard.MustHearComplete,
		Timing:            a.Heard.Timing,
		PatientRef:        s.cfg.PatientRef(a.From),
		DecidedAt:         s.cfg.Now().UTC(),
	}
	if d == NoResponse {
		rec.Confidence = nil
	}
	for _, f := range []struct {
		dst   *Sealed
		field string
		plain string
	}{{&rec.From, FieldFrom, a.From}, {&rec.To, FieldTo, a.To}, {&rec.Transcript, FieldTranscript, a.Transcript}} {
		var err error
		if *f.dst, err = s.cfg.Seal(RecordBinding(rec.CallSID, rec.Script.ID, f.field), f.plain); err != nil {
			return Record{}, false, fmt.Errorf("sealing record: %w", err)
		}
	}
	// held is canceled if the lock is lost, so a decision taken without the
	// lock never commits; the unique constraint still guards the rest.
	stored, created, err := s.cfg.Store.Record(held, rec)
	if err != nil {
		return Record{}, false, fmt.Errorf("recording decision: %w", err)
	}
	// A no_response finding a decision is the usual end of a decided
	// call (its status callback); an answer finding one is a duplicate.
	if !created && d != NoResponse {
		s.cfg.Metrics.DecisionConflict()
	}
	return stored, created, nil
}
