package deepgram

import (
	"errors"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name, msg string
		want      Event // nil: skipped
		err       error
	}{
		{"interim", `{"type":"Results","is_final":false,"start":1.5,"duration":0.5,"channel":{"alternatives":[{"transcript":"yes","confidence":0.4},{"transcript":"yeah","confidence":0.3}]}}`,
			&Interim{Result{Transcript: "yes", Confidence: 0.4, Start: 1.5, Duration: 0.5}}, nil},
		{"final", `{"type":"Results","is_final":true,"speech_final":true,"channel":{"alternatives":[{"transcript":"I agree","confidence":0.93}]}}`,
			&Final{Result{Transcript: "I agree", Confidence: 0.93, IsFinal: true, SpeechFinal: true}}, nil},
		{"empty interim is skipped", `{"type":"Results","is_final":false,"channel":{"alternatives":[{"transcript":"","confidence":0}]}}`, nil, nil},
		{"empty final is kept", `{"type":"Results","is_final":true,"from_finalize":true,"channel":{"alternatives":[]}}`,
			&Final{Result{IsFinal: true, FromFinalize: true}}, nil},
		{"speech started", `{"type":"SpeechStarted","channel":[0,1],"timestamp":9.54}`, &SpeechStarted{Timestamp: 9.54}, nil},
		{"utterance end", `{"channel":[0,1],"last_word_end":2.395,"type":"UtteranceEnd"}`, &UtteranceEnd{LastWordEnd: 2.395}, nil},
		{"metadata", `{"type":"Metadata","transaction_key":"deprecated","request_id":"r1","sha256":"e3","created":"2024-08-29T22:37:55.202Z","duration":0.0,"channels":0}`,
			&Metadata{RequestID: "r1"}, nil},
		{"unknown type is skipped", `{"type":"SomethingNew","x":1}`, nil, nil},
		{"no type", `{"transcript":"yes"}`, nil, ErrMalformed},
		{"truncated", `{"type":"Results","channel":{"alternatives":[`, nil, ErrMalformed},
		{"wrong field type", `{"type":"Results","is_final":"yes I agree"}`, nil, ErrMalformed},
	} {
		got, err := decode([]byte(tc.msg))
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.err)
			continue
		}
		if err != nil && strings.Contains(err.Error(), "agree") {
			t.Errorf("%s: the error quotes the message: %v", tc.name, err)
		}
		if !equalEvent(got, tc.want) {
			t.Errorf("%s: got %#v, want %#v", tc.name, got, tc.want)
		}
	}
}

func equalEvent(a, b Event) bool {
	switch a := a.(type) {
	case nil:
		return b == nil
	case *Interim:
		b, ok := b.(*Interim)
		return ok && *a == *b
	case *Final:
		b, ok := b.(*Final)
		return ok && *a == *b
	case *SpeechStarted:
		b, ok := b.(*SpeechStarted)
		return ok && *a == *b
	case *UtteranceEnd:
		b, ok := b.(*UtteranceEnd)
		return ok && *a == *b
	case *Metadata:
		b, ok := b.(*Metadata)
		return ok && *a == *b
	}
	return false
}

// BenchmarkDecodeResult is the reader's cost per Deepgram message.
func BenchmarkDecodeResult(b *testing.B) {
	msg := []byte(`{"type":"Results","channel_index":[0,1],"duration":1.02,"start":3.1,"is_final":true,"speech_final":true,` +
		`"channel":{"alternatives":[{"transcript":"yes I agree","confidence":0.93,"words":[` +
		`{"word":"yes","start":3.2,"end":3.5,"confidence":0.95},{"word":"i","start":3.6,"end":3.7,"confidence":0.9},` +
		`{"word":"agree","start":3.7,"end":4.1,"confidence":0.94}]}]},"metadata":{"request_id":"8c8ebea9-dbec-45fa-a035-e4632cb05b5f"}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decode(msg); err != nil {
			b.Fatal(err)
		}
	}
}
