package twiml

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/consentline/consentline/consent"
	"github.com/twilio/twilio-go/twiml"
)

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

	// p holds what validation derived from the fields above (hash, timing,
	// the prebuilt <Say> verbs), so the webhook hot path does not recompute
	// it. Nil for a Script that did not come from Parse, Load or Builtin.
	p *prepared
}

// prepared is computed once when a script is validated. Scripts are read-only
// after that: the cache is not invalidated by changes to the fields.
type prepared struct {
	// owner guards against a copied Script (cp := *s; cp.Question = ...)
	// silently reusing the original's hash: the cache only answers for the
	// Script it was computed for.
	owner *Script

	text            string
	ref             consent.ScriptRef
	hints           string // comma-separated, the <Gather hints> form
	mustHearMS      int64
	interruptibleMS int64

	// The <Say> verbs of the disclosure. twiml.Voice only reads its
	// elements, so they are shared by concurrent renders.
	mustHear      []twiml.Element
	interruptible []twiml.Element // interruptible segments, then the question
	hold          holdTemplate
}

// prep returns the script's derived values: the cached ones when the script
// was validated, otherwise freshly computed (correct, just not cached; the
// result is not stored, so concurrent callers never race).
func (s *Script) prep() *prepared {
	if s.p != nil && s.p.owner == s {
		return s.p
	}
	return s.compute()
}

func (s *Script) compute() *prepared {
	p := &prepared{owner: s, hints: strings.Join(s.Hints, ",")}

	var b strings.Builder
	for _, seg := range s.Segments {
		b.WriteString(seg.Text)
		b.WriteByte('\n')
		say := s.say(seg.Text)
		if seg.MustHear {
			p.mustHear = append(p.mustHear, say)
			p.mustHearMS += speakingMS(seg.Text)
		} else {
			p.interruptible = append(p.interruptible, say)
			p.interruptibleMS += speakingMS(seg.Text)
		}
	}
	b.WriteString(s.Question)
	p.interruptible = append(p.interruptible, s.say(s.Question))
	p.interruptibleMS += speakingMS(s.Question)
	p.text = b.String()
	p.hold = newHoldTemplate(s)

	sum := sha256.Sum256([]byte(p.text))
	p.ref = consent.ScriptRef{
		ID:       s.ID,
		Version:  s.Version,
		Language: s.Language,
		SHA256:   hex.EncodeToString(sum[:]),
	}
	return p
}

// say is a <Say> in this script's voice and language: every spoken line
// carries both, so Twilio never falls back to its default English voice in
// the middle of a Spanish call.
func (s *Script) say(text string) twiml.VoiceSay {
	return twiml.VoiceSay{Message: text, Voice: s.Voice, Language: s.Language}
}

// DisclosureText is the exact disclosure text spoken: the segments in order,
// then the question, joined with "\n". Its hash identifies what the caller
// heard (Ref).
func (s *Script) DisclosureText() string { return s.prep().text }

// Ref identifies this script and the exact text spoken; SHA256 is the hex
// SHA-256 of DisclosureText. Computed once at validation.
func (s *Script) Ref() consent.ScriptRef { return s.prep().ref }

// IntentForDigits maps the Digits Twilio reports to an intent: "" (nothing
// pressed) is consent.NoIntent, a key the script does not map is
// consent.Unclear.
func (s *Script) IntentForDigits(d string) consent.Intent {
	if d == "" {
		return consent.NoIntent
	}
	m := s.DTMF
	if m == nil {
		m = defaultDTMF
	}
	if i, ok := m[d]; ok {
		return i
	}
	return consent.Unclear
}

// MustHearMS is the estimated speaking time of the must-hear segments, the
// part of the disclosure the caller cannot interrupt (see speakingMS).
func (s *Script) MustHearMS() int64 { return s.prep().mustHearMS }

// InterruptibleMS is the estimated speaking time of the interruptible
// segments and the question (see speakingMS). MustHearMS()+InterruptibleMS()
// is the estimated length of the whole disclosure.
func (s *Script) InterruptibleMS() int64 { return s.prep().interruptibleMS }
