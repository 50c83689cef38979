package consent

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// StreamMeasurement is what a call's media stream measured while the caller
// heard one disclosure script: when the disclosure's speech started and
// last stopped on the outbound track (what the caller hears), and when the
// caller's latest utterance began and ended on the inbound track (their
// line), echo and background talk excluded. Times are milliseconds from the
// stream's start, -1 for "not seen". One row per (CallSID, ScriptID).
//
// The stream may run on another instance than the one that decides: the
// instance running it saves the measurement (SaveStreamMeasurement) and the
// decision reads it back (MeasuredHeard), through the store all instances
// share.
type StreamMeasurement struct {
	CallSID   string
	ScriptID  string
	StreamSID string
	// StartedAt is the wall-clock time of the stream's t=0 (its start
	// message), the bridge between stream time and webhook time.
	StartedAt time.Time

	PromptOnsetMS int64
	PromptEndMS   int64
	AnswerOnsetMS int64
	AnswerEndMS   int64
	// BargeIn: the outbound track was still speaking the disclosure when
	// the answer began.
	BargeIn bool
	// MustHearEndedAt is when the must-hear part finished playing: Twilio
	// fetched the redirect that follows its last <Say> (wall clock; zero
	// while unknown). Saved by whichever instance took that redirect.
	MustHearEndedAt time.Time
	// AnswerAudio is the caller's answer, 8 kHz μ-law from 300 ms before
	// its onset to 300 ms after its end (at most 30 s), sealed bound to
	// this row (StreamBinding). Empty when none was kept.
	AnswerAudio Sealed
}

// TableStreamMeasurements holds StreamMeasurement rows; FieldAnswerAudio is
// its one sealed field.
const (
	TableStreamMeasurements = "stream_measurements"
	FieldAnswerAudio        = "answer_audio"
)

// StreamBinding is where a call's answer audio for one script belongs.
func StreamBinding(callSID, scriptID string) Binding {
	return Binding{Table: TableStreamMeasurements, CallSID: callSID, ScriptID: scriptID, Field: FieldAnswerAudio}
}

// MaxAnswerAudioBytes bounds the answer audio kept per call: 30 s of 8 kHz
// μ-law.
const MaxAnswerAudioBytes = 30 * 8000

// Validate checks a measurement before it is stored.
func (m StreamMeasurement) Validate() error {
	switch {
	case m.CallSID == "" || m.ScriptID == "":
		return errors.New("consent: stream measurement without call or script")
	case m.StartedAt.IsZero():
		return errors.New("consent: stream measurement without start time")
	case m.PromptOnsetMS < -1 || m.PromptEndMS < -1 || m.AnswerOnsetMS < -1 || m.AnswerEndMS < -1:
		return errors.New("consent: stream measurement with a negative time")
	}
	if m.AnswerAudio != "" {
		if err := m.AnswerAudio.Check("answer audio"); err != nil {
			return err
		}
	}
	return nil
}

// Heard is what the measurement says the caller had heard when their answer
// began; ok is false when it holds no answer onset or no disclosure speech
// (the decision then keeps its estimate). A gatherOpened answer (Twilio's
// <Gather> heard it) cannot have started before the must-hear part ended
// unless the caller was already talking over it, which the stream saw; so
// when the must-hear end was not seen, it counts as complete for a
// gatherOpened answer and as not complete otherwise.
func (m StreamMeasurement) Heard(gatherOpened bool) (h Heard, ok bool) {
	if m.PromptOnsetMS < 0 || m.AnswerOnsetMS < 0 {
		return Heard{}, false
	}
	h = Heard{Timing: TimingMeasured, BargeIn: m.BargeIn}
	h.MS = max(0, m.AnswerOnsetMS-m.PromptOnsetMS)
	if !m.BargeIn && m.PromptEndMS >= m.PromptOnsetMS {
		// The answer came after the disclosure: the caller heard all of
		// it, and the silence before answering is not disclosure.
		h.MS = min(h.MS, m.PromptEndMS-m.PromptOnsetMS)
	}
	if m.MustHearEndedAt.IsZero() {
		h.MustHearComplete = gatherOpened && !m.answerBeganBefore(time.Time{})
	} else {
		h.MustHearComplete = !m.answerBeganBefore(m.MustHearEndedAt)
	}
	return h, true
}

// HeardWithoutAnswer is what the measurement says of a call that ended
// without an answer: how much of the disclosure played before it stopped
// (the end of the last outbound speech the stream saved), and whether the
// must-hear part had finished; ok is false when the stream saved no
// disclosure speech with its end (then nothing was measured).
func (m StreamMeasurement) HeardWithoutAnswer() (h Heard, ok bool) {
	if m.PromptOnsetMS < 0 || m.PromptEndMS < m.PromptOnsetMS {
		return Heard{}, false
	}
	return Heard{MS: m.PromptEndMS - m.PromptOnsetMS, MustHearComplete: !m.MustHearEndedAt.IsZero(), Timing: TimingMeasured}, true
}

// answerBeganBefore reports whether the answer's onset (wall clock) came
// before t; the zero t is before everything.
func (m StreamMeasurement) answerBeganBefore(t time.Time) bool {
	return m.StartedAt.Add(time.Duration(m.AnswerOnsetMS) * time.Millisecond).Before(t)
}

// SaveStreamMeasurement stores what the call's stream measured, sealing the
// answer audio (μ-law bytes, at most MaxAnswerAudioBytes; nil keeps none)
// bound to the row. m.AnswerAudio is ignored. It replaces the stream's
// earlier measurement of the same call and script, but not the must-hear
// end (MustHearEnded's).
func (s *Service) SaveStreamMeasurement(ctx context.Context, m StreamMeasurement, answerAudio []byte) error {
	if len(answerAudio) > MaxAnswerAudioBytes {
		return fmt.Errorf("consent: answer audio of %d bytes exceeds %d", len(answerAudio), MaxAnswerAudioBytes)
	}
	m.AnswerAudio = ""
	if len(answerAudio) > 0 {
		var err error
		if m.AnswerAudio, err = s.cfg.Seal(StreamBinding(m.CallSID, m.ScriptID), string(answerAudio)); err != nil {
			return fmt.Errorf("sealing answer audio: %w", err)
		}
	}
	return s.cfg.Store.SaveStreamMeasurement(ctx, m) // the store validates m
}

// MustHearEnded records that the must-hear part of scriptID's disclosure
// finished playing on callSID at at (when Twilio's redirect after it
// arrived).
func (s *Service) MustHearEnded(ctx context.Context, callSID, scriptID string, at time.Time) error {
	return s.cfg.Store.MustHearEnded(ctx, callSID, scriptID, at.UTC())
}

// Decision returns the record of (callSID, scriptID), or ok false when the
// call has none yet.
func (s *Service) Decision(ctx context.Context, callSID, scriptID string) (Record, bool, error) {
	rec, err := s.cfg.Store.Get(ctx, callSID, scriptID)
	switch {
	case errors.Is(err, ErrNotFound):
		return Record{}, false, nil
	case err != nil:
		return Record{}, false, err
	}
	return rec, true, nil
}

// MeasuredHeard returns what the call's media stream measured for its answer
// to scriptID, or ok false when no stream measured one (the caller keeps
// its estimate).
func (s *Service) MeasuredHeard(ctx context.Context, callSID, scriptID string, gatherOpened bool) (Heard, bool, error) {
	m, err := s.cfg.Store.StreamMeasurement(ctx, callSID, scriptID)
	switch {
	case errors.Is(err, ErrNotFound):
		return Heard{}, false, nil
	case err != nil:
		return Heard{}, false, fmt.Errorf("reading the stream's measurement: %w", err)
	}
	h, ok := m.Heard(gatherOpened)
	return h, ok, nil
}

// StreamHeard is what m, a stream's own measurement not necessarily saved
// yet, says the caller had heard, with the must-hear end stored for the
// call (by whichever instance took the must-hear redirect).
func (s *Service) StreamHeard(ctx context.Context, m StreamMeasurement, gatherOpened bool) (Heard, bool, error) {
	stored, err := s.cfg.Store.StreamMeasurement(ctx, m.CallSID, m.ScriptID)
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		return Heard{}, false, fmt.Errorf("reading the must-hear end: %w", err)
	default:
		m.MustHearEndedAt = stored.MustHearEndedAt
	}
	h, ok := m.Heard(gatherOpened)
	return h, ok, nil
}

// HeardUntilHangUp is what the call's media stream measured of a call that
// ended without an answer (HeardWithoutAnswer), or an estimate of nothing
// heard, labelled so, when no stream measured it (or it cannot be read:
// the record is then still written, with what is known).
func (s *Service) HeardUntilHangUp(ctx context.Context, callSID, scriptID string) Heard {
	unknown := Heard{Timing: TimingEstimated}
	m, err := s.cfg.Store.StreamMeasurement(ctx, callSID, scriptID)
	if err != nil {
		return unknown
	}
	if m.AnswerOnsetMS >= 0 {
		if h, ok := m.Heard(false); ok {
			return h
		}
	}
	if h, ok := m.HeardWithoutAnswer(); ok {
		return h
	}
	return unknown
}

// Evidence is one script's answer audio of a call, opened.
type Evidence struct {
	Measurement StreamMeasurement
	// Audio is the answer as 8 kHz μ-law; nil when none was kept.
	Audio []byte
}

// Evidence returns the answer audio the call's streams kept, one per
// script, opened with the service's keys. A call with no stream measurement
// returns an empty slice.
func (s *Service) Evidence(ctx context.Context, callSID string) ([]Evidence, error) {
	ms, err := s.cfg.Store.StreamMeasurements(ctx, callSID)
	if err != nil {
		return nil, err
	}
	out := make([]Evidence, 0, len(ms))
	for _, m := range ms {
		e := Evidence{Measurement: m}
		if m.AnswerAudio != "" {
			plain, err := s.cfg.Open(StreamBinding(m.CallSID, m.ScriptID), m.AnswerAudio)
			if err != nil {
				return nil, fmt.Errorf("opening answer audio of script %s: %w", m.ScriptID, err)
			}
			e.Audio = []byte(plain)
		}
		out = append(out, e)
	}
	return out, nil
}
