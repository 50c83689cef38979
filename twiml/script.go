// Package twiml holds the versioned disclosure scripts ConsentLine reads to
// callers and renders them, and every other spoken step of the call, to TwiML.
package twiml

import "github.com/consentline/consentline/consent"

// Segment is one part of the disclosure.
type Segment struct {
	Text string `json:"text" yaml:"text"`
	// MustHear segments are spoken outside any <Gather>, so the caller
	// cannot interrupt them.
	MustHear bool `json:"must_hear" yaml:"must_hear"`
}

// Script is one version of a disclosure in one language. Scripts are data:
// the built-in ones and a clinic's DISCLOSURE_FILE share this shape.
type Script struct {
	ID       string `json:"id" yaml:"id"`
	Version  string `json:"version" yaml:"version"`
	Language string `json:"language" yaml:"language"` // BCP-47, e.g. en-US; also the <Gather language>
	// Voice is the <Say voice> (e.g. "Polly.Joanna"); empty means Twilio's default.
	Voice string `json:"voice,omitempty" yaml:"voice,omitempty"`

	// Greeting opens the call. The language-choice prompts of the other
	// scripts in the Library are spoken right after it.
	Greeting string `json:"greeting" yaml:"greeting"`
	// LanguagePrompt invites a caller to choose this script's language,
	// e.g. "Para español, oprima 9." (spoken in this script's voice).
	LanguagePrompt string `json:"language_prompt,omitempty" yaml:"language_prompt,omitempty"`
	// LanguageKey is the key that chooses this script's language.
	LanguageKey string `json:"language_key,omitempty" yaml:"language_key,omitempty"`

	// Segments, in order, are the disclosure itself.
	Segments []Segment `json:"segments" yaml:"segments"`
	// Question asks for the answer; it ends the interruptible part.
	Question string `json:"question" yaml:"question"`
	// Reprompts are the shorter questions asked after an unclear answer, in
	// order; at most two are used.
	Reprompts []string `json:"reprompts" yaml:"reprompts"`
	// Confirm asks for a key press when speech came without a confidence.
	Confirm string `json:"confirm" yaml:"confirm"`
	// ReadBack is spoken once a decision is recorded, per decision
	// ("granted", "declined").
	ReadBack map[consent.Decision]string `json:"read_back" yaml:"read_back"`
	// NoResponse is the polite close after the last unclear answer.
	NoResponse string `json:"no_response" yaml:"no_response"`
	// Hold is spoken when the service needs a moment (a dependency is slow).
	Hold string `json:"hold" yaml:"hold"`

	// DTMF maps keys to intents (default "1" agree, "2" decline).
	DTMF map[string]consent.Intent `json:"dtmf" yaml:"dtmf"`
	// Hints are speech-recognition hints for the answer phrases.
	Hints []string `json:"hints" yaml:"hints"`
}
