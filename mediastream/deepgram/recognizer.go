package deepgram

import (
	"context"
	"strings"

	"github.com/consentline/consentline/mediastream"
)

// Recognizer is mediastream.Recognizer over Deepgram's live API: one Stream
// per call, its final results joined into utterances.
type Recognizer struct {
	// Config is used for every call; Language is set per call.
	Config Config
}

var _ mediastream.Recognizer = Recognizer{}

// Open dials Deepgram for one call.
func (r Recognizer) Open(ctx context.Context, language string) (mediastream.RecognizerSession, error) {
	cfg := r.Config
	if language != "" {
		cfg.Language = language
	}
	st, err := Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s := &session{Stream: st, out: make(chan mediastream.Utterance, 8)}
	go s.assemble()
	return s, nil
}

// session joins a call's Final results into utterances: Deepgram finalizes
// an utterance span by span (is_final), and says it is complete with
// speech_final (endpointing heard the caller stop) or UtteranceEnd (a word
// gap, which also covers noisy lines where endpointing never fires).
// Interim results, and final segments of an utterance the stream ended in
// the middle of, are dropped here: they never decide.
type session struct {
	*Stream
	out chan mediastream.Utterance
	err error // set before out is closed
}

func (s *session) Utterances() <-chan mediastream.Utterance { return s.out }

// Err is why the session ended; valid once Utterances is closed.
func (s *session) Err() error { return s.err }

func (s *session) assemble() {
	defer close(s.out)
	var parts []string
	var u mediastream.Utterance
	flush := func() {
		if len(parts) > 0 {
			u.Transcript = strings.Join(parts, " ")
			s.out <- u
		}
		parts, u = nil, mediastream.Utterance{}
	}
	for ev := range s.Events() {
		switch ev := ev.(type) {
		case *Final:
			if t := strings.TrimSpace(ev.Transcript); t != "" {
				start, end := int64(ev.Start*1000), int64((ev.Start+ev.Duration)*1000)
				if len(parts) == 0 {
					u = mediastream.Utterance{Confidence: ev.Confidence, StartMS: start, EndMS: end}
				}
				parts = append(parts, t)
				u.Confidence = min(u.Confidence, ev.Confidence)
				u.EndMS = max(u.EndMS, end)
			}
			if ev.SpeechFinal {
				flush()
			}
		case *UtteranceEnd:
			flush()
		case *Closed:
			// An utterance Deepgram never said was complete (no
			// speech_final, no UtteranceEnd) is a prefix of what the
			// caller said — "yes, can you repeat that?" before "no" — and
			// never decides: it is dropped, and the Gather decides.
			s.err = ev.Err
		}
	}
}
