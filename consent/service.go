package consent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/google/uuid"
)

// DefaultThreshold is CONSENT_CONFIDENCE_THRESHOLD's default: speech
// recognized with less confidence never decides.
const DefaultThreshold = 0.75

// Config wires a Service. Seal and PatientRef are functions rather than an
// interface because there is one implementation (consent/pii) and this
// package must not import it.
type Config struct {
	Store  Store
	Locker Locker
	// Threshold is the minimum recognizer confidence for speech to decide.
	Threshold float64
	// Seal encrypts one PHI value for storage.
	Seal func(plaintext string) (Sealed, error)
	// PatientRef pseudonymizes the caller's number.
	PatientRef func(number string) string
	// Now defaults to time.Now.
	Now func() time.Time
}

// Service classifies answers and records decisions exactly once per call
// and script: a per-call lock serializes deciding, and the store's unique
// constraint is the last guard.
type Service struct {
	cfg Config
}

// NewService returns a Service; it panics on a missing dependency, which is
// a programming error, not bad input.
func NewService(cfg Config) *Service {
	if cfg.Store == nil || cfg.Locker == nil || cfg.Seal == nil || cfg.PatientRef == nil {
		panic("consent: NewService needs Store, Locker, Seal and PatientRef")
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

// Answer is one answer from the caller: speech (final or partial) or a key.
type Answer struct {
	Call
	Source Source
	// Intent is set by the caller for DTMF (the script maps keys); for
	// speech it is left empty and the transcript is classified.
	Intent     Intent
	Transcript string
	// Confidence is the recognizer's confidence (for partials, Twilio's
	// Stability); nil when the recognizer gave none.
	Confidence *float64
	// BargeIn and HeardMS say where in the disclosure the answer came.
	BargeIn bool
	HeardMS int64
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
		out.Intent = Classify(a.Script.Language, a.Transcript)
		switch {
		case out.Intent == NoIntent || out.Intent == Unclear:
		case a.Source == SourceSpeechPartial && !answerComplete(a.Transcript):
			// A partial is a prefix of what the caller is saying: "I do"
			// may yet become "I do not agree". Only a partial that ends on
			// a word that completes an answer decides early.
			out.Intent = Unclear
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

// RecordNoResponse records that the call ended, or the caller ran out of
// re-prompts, without a decision. It does nothing when a decision exists.
func (s *Service) RecordNoResponse(ctx context.Context, c Call, source Source, heardMS int64) (Record, bool, error) {
	return s.record(ctx, Answer{Call: c, Source: source, HeardMS: heardMS}, NoResponse)
}

// record stores one decision under the per-call lock.
func (s *Service) record(ctx context.Context, a Answer, d Decision) (Record, bool, error) {
	held, release, err := s.cfg.Locker.Acquire(ctx, "call:"+a.CallSID)
	if err != nil {
		return Record{}, false, fmt.Errorf("per-call lock: %w", err)
	}
	defer release()

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
		BargeIn:           a.BargeIn,
		DisclosureHeardMS: a.HeardMS,
		PatientRef:        s.cfg.PatientRef(a.From),
		DecidedAt:         s.cfg.Now().UTC(),
	}
	if d == NoResponse {
		rec.Confidence = nil
	}
	for _, f := range []struct {
		dst   *Sealed
		plain string
	}{{&rec.From, a.From}, {&rec.To, a.To}, {&rec.Transcript, a.Transcript}} {
		if *f.dst, err = s.cfg.Seal(f.plain); err != nil {
			return Record{}, false, fmt.Errorf("sealing record: %w", err)
		}
	}
	// held is canceled if the lock is lost, so a decision taken without the
	// lock never commits; the unique constraint still guards the rest.
	stored, created, err := s.cfg.Store.Record(held, rec)
	if err != nil {
		return Record{}, false, fmt.Errorf("recording decision: %w", err)
	}
	return stored, created, nil
}

// completingWords end an answer: a partial result whose last word is one of
// them has said what it means, and negations before it are already in it
// ("I don't agree"). Bare "no" and "not" are left out on purpose: "no
// problem, I agree" and "I do not mind" start with them.
var completingWords = map[string]bool{
	"yes": true, "yeah": true, "yep": true, "sure": true, "okay": true, "ok": true,
	"agree": true, "consent": true, "accept": true, "fine": true, "course": true,
	"nope": true, "decline": true, "refuse": true, "thanks": true,
	"si": true, "sí": true, "acuerdo": true, "acepto": true, "consiento": true,
	"consentimiento": true, "claro": true, "vale": true, "gracias": true,
}

// answerComplete reports whether a partial transcript ends on a word that
// completes an answer.
func answerComplete(text string) bool {
	words := strings.FieldsFunc(strings.ToLower(text), func(r rune) bool {
		return !unicode.IsLetter(r) && r != '\''
	})
	return len(words) > 0 && completingWords[words[len(words)-1]]
}
