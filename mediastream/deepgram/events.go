package deepgram

import (
	"encoding/json"
	"fmt"
)

// Event is one thing Deepgram told the stream: *SpeechStarted, *Interim, *Final,
// *UtteranceEnd, *Metadata, or the terminal *Closed. Switch on the type.
type Event interface{ event() }

// SpeechStarted is Deepgram's voice-activity event (sent because the stream asks
// for vad_events=true): speech began Timestamp seconds after the stream's first
// audio. It is a hint that the caller is speaking, never a decision.
// Message shape: https://developers.deepgram.com/docs/speech-started
type SpeechStarted struct {
	Timestamp float64
}

// Result is one Deepgram "Results" message, reduced to the top alternative.
// Start and Duration are in seconds from the stream's first audio.
// Message shape: the Results type of Deepgram's SDKs and
// https://developers.deepgram.com/docs/interim-results,
// https://developers.deepgram.com/docs/understand-endpointing-interim-results.
type Result struct {
	Transcript   string  // channel.alternatives[0].transcript; caller speech: never log it
	Confidence   float64 // channel.alternatives[0].confidence, 0–1
	IsFinal      bool    // is_final: this span of audio will not be transcribed again
	SpeechFinal  bool    // speech_final: endpointing saw the caller stop speaking
	FromFinalize bool    // from_finalize: the flush answering Finalize
	Start        float64 // start, seconds
	Duration     float64 // duration, seconds
}

// Interim is a Result with is_final=false: Deepgram's current guess, which it may
// still change. It only signals that the caller is speaking and never decides
// anything. Interims with an empty transcript (Deepgram's answer to silence) are
// not reported.
type Interim struct{ Result }

// Final is a Result with is_final=true: Deepgram's definitive transcript of a
// span of audio, the only kind of result that may decide consent. A Final can
// have an empty transcript (nothing was said in that span).
type Final struct{ Result }

// UtteranceEnd is Deepgram's word-gap event (sent because the stream asks for
// utterance_end_ms): no word for utterance_end_ms after the word that ended at
// LastWordEnd seconds. Message shape: https://developers.deepgram.com/docs/utterance-end
type UtteranceEnd struct {
	LastWordEnd float64
}

// Metadata is Deepgram's summary of the stream, sent in answer to CloseStream
// before it closes the socket (https://developers.deepgram.com/docs/close-stream).
// Duration is the seconds of audio Deepgram received.
type Metadata struct {
	RequestID string
	Duration  float64
	Channels  int
}

// Closed is the last event on the channel, which is closed after it. Err is nil
// after an orderly Close, else the reason the stream failed (see the Err values
// and *ServerCloseError).
type Closed struct {
	Err error
}

func (*SpeechStarted) event() {}
func (*Interim) event()       {}
func (*Final) event()         {}
func (*UtteranceEnd) event()  {}
func (*Metadata) event()      {}
func (*Closed) event()        {}

// The server messages, each with the fields this client reads. They are
// decoded per type because they disagree on "channel": an object of
// alternatives in Results, an [index, count] pair in SpeechStarted and
// UtteranceEnd.
type (
	wireType struct {
		Type string `json:"type"`
	}
	wireResults struct {
		Channel struct {
			Alternatives []struct {
				Transcript string  `json:"transcript"`
				Confidence float64 `json:"confidence"`
			} `json:"alternatives"`
		} `json:"channel"`
		IsFinal      bool    `json:"is_final"`
		SpeechFinal  bool    `json:"speech_final"`
		FromFinalize bool    `json:"from_finalize"`
		Start        float64 `json:"start"`
		Duration     float64 `json:"duration"`
	}
	wireSpeechStarted struct {
		Timestamp float64 `json:"timestamp"`
	}
	wireUtteranceEnd struct {
		LastWordEnd float64 `json:"last_word_end"`
	}
	wireMetadata struct {
		RequestID string  `json:"request_id"`
		Duration  float64 `json:"duration"`
		Channels  int     `json:"channels"`
	}
)

// decode turns one text message into an Event. It returns (nil, nil) for a message
// to skip: an unknown type (Deepgram may add some) or an empty interim. The error
// never quotes the message, which may hold a transcript.
func decode(data []byte) (Event, error) {
	var t wireType
	if err := unmarshal(data, &t); err != nil {
		return nil, err
	}
	switch t.Type {
	case "Results":
		var m wireResults
		if err := unmarshal(data, &m); err != nil {
			return nil, err
		}
		r := Result{
			IsFinal:      m.IsFinal,
			SpeechFinal:  m.SpeechFinal,
			FromFinalize: m.FromFinalize,
			Start:        m.Start,
			Duration:     m.Duration,
		}
		if alts := m.Channel.Alternatives; len(alts) > 0 {
			r.Transcript, r.Confidence = alts[0].Transcript, alts[0].Confidence
		}
		if r.IsFinal {
			return &Final{r}, nil
		}
		if r.Transcript == "" {
			return nil, nil
		}
		return &Interim{r}, nil
	case "SpeechStarted":
		var m wireSpeechStarted
		if err := unmarshal(data, &m); err != nil {
			return nil, err
		}
		return &SpeechStarted{Timestamp: m.Timestamp}, nil
	case "UtteranceEnd":
		var m wireUtteranceEnd
		if err := unmarshal(data, &m); err != nil {
			return nil, err
		}
		return &UtteranceEnd{LastWordEnd: m.LastWordEnd}, nil
	case "Metadata":
		var m wireMetadata
		if err := unmarshal(data, &m); err != nil {
			return nil, err
		}
		return &Metadata{RequestID: m.RequestID, Duration: m.Duration, Channels: m.Channels}, nil
	case "":
		return nil, fmt.Errorf("%w: %d-byte text message without a type", ErrMalformed, len(data))
	default:
		return nil, nil
	}
}

func unmarshal(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %d-byte text message: %s", ErrMalformed, len(data), jsonErrorKind(err))
	}
	return nil
}

// jsonErrorKind names a JSON error without the offending text: a syntax error
// or a type mismatch can quote a value, and values here can be transcripts.
func jsonErrorKind(err error) string {
	switch e := err.(type) {
	case *json.SyntaxError:
		return fmt.Sprintf("invalid JSON at offset %d", e.Offset)
	case *json.UnmarshalTypeError:
		return fmt.Sprintf("field %q has the wrong type", e.Field)
	default:
		return "invalid JSON"
	}
}
