package twiml

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/consentline/consentline/consent"
	"github.com/twilio/twilio-go/twiml"
)

// languageTimeoutS is how long, in seconds, Twilio waits for a language key
// after the greeting before it moves on to the default disclosure. Short: most
// callers press nothing, and they should not sit in silence.
const languageTimeoutS = 1

// GatherURLs are the absolute callback URLs of an answer <Gather>, built by
// the caller from PUBLIC_BASE_URL (Twilio signs requests against them, so
// they must be exactly the public URLs).
type GatherURLs struct {
	// Action receives the final answer (SpeechResult/Confidence or Digits),
	// and also an empty result when the caller said nothing.
	Action string
	// PartialResult receives interim speech results while the caller talks;
	// empty leaves partialResultCallback off.
	PartialResult string
	// Stream, when set, starts the call's media stream right before the
	// disclosure's first <Say>, so the stream's first outbound speech is
	// the disclosure (not the greeting).
	Stream *Stream
	// MustHearDone, when set, ends the must-hear part with a <Redirect> to
	// it instead of the answer <Gather>: Twilio fetches it the moment the
	// last must-hear <Say> has finished playing, which is how that moment
	// is measured. The IVR answers it with AfterMustHear.
	MustHearDone string
}

// Stream is a unidirectional Media Stream of both tracks
// (<Start><Stream track="both_tracks">).
type Stream struct {
	// Name identifies the stream within the call (one per script, so a
	// disclosure restarted in another language stops the earlier one).
	Name string
	// URL is the wss:// URL Twilio connects to. No query string: Twilio
	// refuses one, and the upgrade's signature is over the URL as written
	// here (CONTRACT §1). What the handler needs goes in Parameters.
	URL string
	// StatusCallback receives stream-started, stream-stopped and
	// stream-error.
	StatusCallback string
	// Parameters arrive in the stream's start message as customParameters,
	// in this order.
	Parameters [][2]string
	// Stop names an earlier stream of the call to stop first ("" for none).
	Stop string
}

// emptyDoc is what twiml.Voice(nil) produces; kept as a constant because an
// empty answer is the hot path of the status callback.
const emptyDoc = `<?xml version="1.0" encoding="UTF-8"?><Response/>`

// Empty is an empty TwiML document, for callbacks that need no TwiML.
func Empty() []byte { return []byte(emptyDoc) }

// Incoming is the answer to a new call: the greeting and the other
// languages' prompts inside a short DTMF <Gather> posting a language key to
// languageAction, then exactly what Disclosure renders for s. A caller who
// presses nothing falls through to s's disclosure after languageTimeoutS;
// the IVR answers languageAction with Disclosure of the chosen script (or of
// s again for a key that chooses nothing). With no other language in l the
// greeting is spoken without a <Gather>, and languageAction is unused.
// Use l.GreetingMS(s) for when the disclosure starts.
func Incoming(l *Library, s *Script, languageAction string, g GatherURLs) ([]byte, error) {
	if err := checkGather(g); err != nil {
		return nil, err
	}
	p := s.prep()
	others := l.languageChoices(s)
	verbs := make([]twiml.Element, 0, 2+len(p.mustHear))
	if len(others) == 0 {
		if s.Greeting != "" {
			verbs = append(verbs, s.say(s.Greeting))
		}
	} else {
		if err := checkURL("language action", languageAction, true); err != nil {
			return nil, err
		}
		inner := make([]twiml.Element, 0, 1+len(others))
		if s.Greeting != "" {
			inner = append(inner, s.say(s.Greeting))
		}
		for _, o := range others {
			// Each prompt in its own language and voice: "Para
			// español, oprima 9" read by an English voice is not
			// understood by the callers it is for.
			inner = append(inner, o.say(o.LanguagePrompt))
		}
		verbs = append(verbs, twiml.VoiceGather{
			Input:         "dtmf",
			NumDigits:     "1",
			Timeout:       strconv.Itoa(languageTimeoutS),
			Action:        languageAction,
			Method:        "POST",
			InnerElements: inner,
		})
	}
	verbs = appendDisclosure(verbs, s, p, g)
	return render(verbs)
}

// Disclosure reads the disclosure and asks the question. Must-hear segments
// are <Say>s outside any <Gather>, so neither speech nor a key press can cut
// them short; the interruptible segments and the question are inside a
// speech+DTMF <Gather> with bargeIn, so a caller who already knows their
// answer can give it. actionOnEmptyResult makes Twilio post to g.Action even
// on silence, so the IVR decides what happens next instead of Twilio falling
// off the end of the document and hanging up.
func Disclosure(s *Script, g GatherURLs) ([]byte, error) {
	if err := checkGather(g); err != nil {
		return nil, err
	}
	p := s.prep()
	verbs := make([]twiml.Element, 0, 1+len(p.mustHear))
	return render(appendDisclosure(verbs, s, p, g))
}

func appendDisclosure(verbs []twiml.Element, s *Script, p *prepared, g GatherURLs) []twiml.Element {
	if g.Stream != nil {
		if g.Stream.Stop != "" && g.Stream.Stop != g.Stream.Name {
			verbs = append(verbs, twiml.VoiceStop{InnerElements: []twiml.Element{twiml.VoiceStream{Name: g.Stream.Stop}}})
		}
		verbs = append(verbs, g.Stream.start())
	}
	verbs = append(verbs, p.mustHear...)
	if g.MustHearDone != "" {
		return append(verbs, twiml.VoiceRedirect{Url: g.MustHearDone, Method: "POST"})
	}
	return append(verbs, answerGather(s, p, g, p.interruptible))
}

func (st *Stream) start() twiml.VoiceStart {
	params := make([]twiml.Element, 0, len(st.Parameters))
	for _, kv := range st.Parameters {
		params = append(params, twiml.VoiceParameter{Name: kv[0], Value: kv[1]})
	}
	return twiml.VoiceStart{InnerElements: []twiml.Element{twiml.VoiceStream{
		Name:                 st.Name,
		Url:                  st.URL,
		Track:                "both_tracks",
		StatusCallback:       st.StatusCallback,
		StatusCallbackMethod: "POST",
		InnerElements:        params,
	}}}
}

// AfterMustHear is the rest of the disclosure once its must-hear part has
// played (the answer to GatherURLs.MustHearDone's redirect): the
// interruptible segments and the question inside the answer <Gather>.
func AfterMustHear(s *Script, g GatherURLs) ([]byte, error) {
	g.Stream, g.MustHearDone = nil, ""
	if err := checkGather(g); err != nil {
		return nil, err
	}
	p := s.prep()
	return render([]twiml.Element{answerGather(s, p, g, p.interruptible)})
}

// Reprompt asks again after an unclear or missing answer: the same <Gather>
// as Disclosure's with s.Reprompts[attempt-1] (attempt is clamped to the
// re-prompts there are, so a third attempt hears the last one again).
func Reprompt(s *Script, attempt int, g GatherURLs) ([]byte, error) {
	if err := checkGather(g); err != nil {
		return nil, err
	}
	if len(s.Reprompts) == 0 {
		return nil, fmt.Errorf("twiml: script %s/%s has no reprompts", s.ID, s.Language)
	}
	i := min(max(attempt, 1), len(s.Reprompts)) - 1
	p := s.prep()
	inner := []twiml.Element{s.say(s.Reprompts[i])}
	return render([]twiml.Element{answerGather(s, p, g, inner)})
}

// answerGather is the <Gather> every answer to the question goes through.
func answerGather(s *Script, p *prepared, g GatherURLs, inner []twiml.Element) twiml.VoiceGather {
	return twiml.VoiceGather{
		Input:                 "speech dtmf",
		BargeIn:               "true",
		NumDigits:             "1",
		SpeechTimeout:         "auto",
		Language:              s.Language,
		Hints:                 p.hints,
		Action:                g.Action,
		Method:                "POST",
		PartialResultCallback: g.PartialResult,
		ActionOnEmptyResult:   "true",
		InnerElements:         inner,
	}
}

// Confirm asks for a key press to confirm a spoken answer the recognizer was
// not sure of. Key-only: asking to confirm speech with more speech would
// repeat the uncertainty.
func Confirm(s *Script, action string) ([]byte, error) {
	if err := checkURL("confirm action", action, true); err != nil {
		return nil, err
	}
	return render([]twiml.Element{twiml.VoiceGather{
		Input:               "dtmf",
		NumDigits:           "1",
		Action:              action,
		Method:              "POST",
		ActionOnEmptyResult: "true",
		InnerElements:       []twiml.Element{s.say(s.Confirm)},
	}})
}

// ReadBack tells the caller what was recorded, then hangs up.
// consent.NoResponse reads the script's no-response close.
func ReadBack(s *Script, d consent.Decision) ([]byte, error) {
	if d == consent.NoResponse {
		return NoResponse(s)
	}
	text, ok := s.ReadBack[d]
	if !ok || text == "" {
		return nil, fmt.Errorf("twiml: script %s/%s has no read_back for %q", s.ID, s.Language, d)
	}
	return render([]twiml.Element{s.say(text), twiml.VoiceHangup{}})
}

// NoResponse is the polite close after the last unclear answer; it hangs up.
func NoResponse(s *Script) ([]byte, error) {
	return render([]twiml.Element{s.say(s.NoResponse), twiml.VoiceHangup{}})
}

// Hold keeps the caller on the line while a dependency is slow: the hold
// line, a one-second pause, then a POST to redirect, which answers with the
// real next step (or holds again). Answering this way keeps every webhook far
// inside Twilio's 15-second timeout. A script without a hold line pauses in
// silence.
//
// The hold is what an instance past its capacity answers to most webhooks,
// so its cost is what a burst costs: the document is rendered once per
// script around a placeholder, and a redirect URL of plain URL characters
// is spliced in (escaped as the renderer would: only '&' needs it).
func Hold(s *Script, redirect string) ([]byte, error) {
	if err := checkURL("hold redirect", redirect, true); err != nil {
		return nil, err
	}
	if s.p != nil && s.p.owner == s && s.p.hold.prefix != "" && plainURL(redirect) {
		t := s.p.hold
		doc := make([]byte, 0, len(t.prefix)+len(redirect)+16+len(t.suffix))
		doc = append(doc, t.prefix...)
		for i := 0; i < len(redirect); i++ {
			if redirect[i] == '&' {
				doc = append(doc, "&amp;"...)
			} else {
				doc = append(doc, redirect[i])
			}
		}
		return append(doc, t.suffix...), nil
	}
	return renderHold(s, redirect)
}

func renderHold(s *Script, redirect string) ([]byte, error) {
	verbs := make([]twiml.Element, 0, 3)
	if s.Hold != "" {
		verbs = append(verbs, s.say(s.Hold))
	}
	verbs = append(verbs,
		twiml.VoicePause{Length: "1"},
		twiml.VoiceRedirect{Url: redirect, Method: "POST"},
	)
	return render(verbs)
}

// holdTemplate is a script's hold document split where its redirect URL
// goes.
type holdTemplate struct{ prefix, suffix string }

// holdPlaceholder stands in for the redirect URL when the template is
// rendered: plain, so the renderer leaves it as it is.
const holdPlaceholder = "https://hold.invalid/redirect-placeholder"

func newHoldTemplate(s *Script) holdTemplate {
	doc, err := renderHold(s, holdPlaceholder)
	if err != nil {
		return holdTemplate{}
	}
	prefix, suffix, ok := strings.Cut(string(doc), holdPlaceholder)
	if !ok {
		return holdTemplate{} // every hold renders in full
	}
	return holdTemplate{prefix: prefix, suffix: suffix}
}

// plainURL reports whether u has only printable ASCII characters that an
// XML attribute keeps as they are, apart from '&'.
func plainURL(u string) bool {
	for i := 0; i < len(u); i++ {
		switch c := u[i]; {
		case c <= ' ' || c >= 0x7f, c == '<', c == '>', c == '"', c == '\'':
			return false
		}
	}
	return true
}

func render(verbs []twiml.Element) ([]byte, error) {
	doc, err := twiml.Voice(verbs)
	if err != nil {
		return nil, fmt.Errorf("twiml: render: %w", err)
	}
	return []byte(doc), nil
}

func checkGather(g GatherURLs) error {
	if err := checkURL("gather action", g.Action, true); err != nil {
		return err
	}
	if err := checkURL("must-hear redirect", g.MustHearDone, false); err != nil {
		return err
	}
	if st := g.Stream; st != nil {
		rest, ok := strings.CutPrefix(st.URL, "wss://")
		if !ok || rest == "" || rest[0] == '/' || strings.ContainsAny(rest, "?#") {
			return fmt.Errorf("twiml: stream URL %q is not an absolute wss:// URL without a query", st.URL)
		}
		if st.Name == "" {
			return errors.New("twiml: stream without a name")
		}
		if err := checkURL("stream status callback", st.StatusCallback, false); err != nil {
			return err
		}
	}
	return checkURL("partial result callback", g.PartialResult, false)
}

// checkURL insists on absolute http(s) URLs: Twilio would resolve a relative
// one against the webhook's URL, and signatures are checked against the
// PUBLIC_BASE_URL form (CONTRACT.md §1), so a relative URL is a bug to catch
// here rather than a 403 mid-call. A prefix check, not url.Parse: this runs
// on every webhook.
func checkURL(what, u string, required bool) error {
	if u == "" {
		if required {
			return fmt.Errorf("twiml: %s URL is empty", what)
		}
		return nil
	}
	rest, ok := strings.CutPrefix(u, "https://")
	if !ok {
		rest, ok = strings.CutPrefix(u, "http://")
	}
	if !ok || rest == "" || rest[0] == '/' {
		return fmt.Errorf("twiml: %s URL %q is not absolute (build it from PUBLIC_BASE_URL)", what, u)
	}
	return nil
}
