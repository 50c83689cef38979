package mediastream

import "context"

// Recognizer is a streaming speech recognizer: one RecognizerSession per
// call, fed the caller's (inbound) audio as it arrives. The one real
// implementation is Deepgram's live API (mediastream/deepgram, enabled by
// DEEPGRAM_API_KEY); without one, streams still measure and keep evidence,
// and decisions come from the Gather.
type Recognizer interface {
	// Open starts recognizing speech in language (a BCP 47 tag, e.g.
	// en-US). The session ends when ctx ends or Close is called.
	Open(ctx context.Context, language string) (RecognizerSession, error)
}

// RecognizerSession is one call's recognition.
type RecognizerSession interface {
	// Send queues one 20 ms frame of 8 kHz μ-law. It never blocks for long:
	// a recognizer that cannot keep up fails the session instead.
	Send(frame []byte) error
	// Finalize asks for the final result of what was said so far: the
	// caller stopped speaking.
	Finalize() error
	// Utterances delivers each final utterance once; it is closed when the
	// session ends, after which Err says why (nil for an orderly Close).
	Utterances() <-chan Utterance
	Err() error
	// Close ends the session, waiting at most until ctx ends.
	Close(ctx context.Context) error
}

// Utterance is one final recognition of something the caller said. Partial
// (interim) results never become an Utterance: a prefix of what the caller
// is saying is no answer.
type Utterance struct {
	Transcript string // PHI: never logged
	// Confidence is the recognizer's confidence in [0, 1] (the least
	// confident of the utterance's final segments).
	Confidence float64
	// StartMS and EndMS are where the words were heard, in ms from the
	// first audio sent (which is the stream's start).
	StartMS, EndMS int64
}
