package twiml

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/consentline/consentline/consent"
	"go.yaml.in/yaml/v3"
)

// MaxReprompts is how many re-prompts a script may have: after the question
// and this many re-prompts the call closes with NoResponse. Callers answering
// a third time around are better served by staff than by a longer IVR.
const MaxReprompts = 2

// defaultDTMF is the key map a script gets when its file omits dtmf.
var defaultDTMF = map[string]consent.Intent{"1": consent.Agree, "2": consent.Decline}

// Library is one disclosure in one or more languages. The first script is
// the default, spoken to every caller who does not choose another language.
// A Library and its Scripts are read-only once built and safe for concurrent
// use.
type Library struct {
	scripts []*Script
	byKey   map[string]*Script
}

// Default is the first script: the language every call starts in.
func (l *Library) Default() *Script { return l.scripts[0] }

// Scripts returns the scripts in file order, the default first. The slice is
// the caller's; the Scripts are shared and must not be modified.
func (l *Library) Scripts() []*Script { return append([]*Script(nil), l.scripts...) }

// ByLanguage returns the script in lang (a BCP-47 tag, compared without
// regard to case, as BCP-47 prescribes).
func (l *Library) ByLanguage(lang string) (*Script, bool) {
	for _, s := range l.scripts {
		if strings.EqualFold(s.Language, lang) {
			return s, true
		}
	}
	return nil, false
}

// ByLanguageKey returns the script a caller chooses by pressing key during
// the greeting (see Incoming).
func (l *Library) ByLanguageKey(key string) (*Script, bool) {
	s, ok := l.byKey[key]
	return s, ok
}

// GreetingMS is the estimated time from the start of Incoming's TwiML for s
// to the start of its disclosure: the greeting, the other languages' prompts
// and the one second Twilio then waits for a language key. Add it to the
// time Incoming was served to know when the disclosure began.
func (l *Library) GreetingMS(s *Script) int64 {
	others := l.languageChoices(s)
	ms := speakingMS(s.Greeting)
	for _, o := range others {
		ms += speakingMS(o.LanguagePrompt)
	}
	if len(others) > 0 {
		ms += languageTimeoutS * 1000
	}
	return ms
}

// languageChoices are the scripts a caller listening to s can switch to.
func (l *Library) languageChoices(s *Script) []*Script {
	if l == nil {
		return nil
	}
	var out []*Script
	for _, o := range l.scripts {
		if o == s || strings.EqualFold(o.Language, s.Language) || o.LanguageKey == "" || o.LanguagePrompt == "" {
			continue
		}
		out = append(out, o)
	}
	return out
}

// file is the DISCLOSURE_FILE's top level.
type file struct {
	Scripts []*Script `json:"scripts" yaml:"scripts"`
}

// Load reads a DISCLOSURE_FILE (.yaml, .yml or .json; format in the package
// documentation). Every error is one line naming the file, the script and
// the field, so it can be shown as-is when serve refuses to start.
func Load(path string) (*Library, error) {
	ext := strings.ToLower(filepath.Ext(path))
	switch ext {
	case ".yaml", ".yml", ".json":
	default:
		return nil, fmt.Errorf("disclosure file %s: unsupported extension %q (use .yaml, .yml or .json)", path, ext)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("disclosure file %s: %w", path, err)
	}
	l, err := parse(data, ext)
	if err != nil {
		return nil, fmt.Errorf("disclosure file %s: %w", path, err)
	}
	return l, nil
}

// Parse reads a disclosure library from data in format "yaml" (or "yml") or
// "json"; a leading dot is accepted, so a file extension works too.
func Parse(data []byte, format string) (*Library, error) {
	l, err := parse(data, format)
	if err != nil {
		return nil, fmt.Errorf("disclosure: %w", err)
	}
	return l, nil
}

func parse(data []byte, format string) (*Library, error) {
	var f file
	switch strings.ToLower(strings.TrimPrefix(format, ".")) {
	case "yaml", "yml":
		// Unknown keys are errors: a misspelt "must_haer: true" would
		// otherwise silently make a must-hear segment interruptible.
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
			return nil, oneLine(err)
		}
		if err := dec.Decode(new(any)); !errors.Is(err, io.EOF) {
			return nil, errors.New("more than one YAML document (put every script under one top-level scripts:)")
		}
	case "json":
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			return nil, jsonError(data, err)
		}
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			return nil, errors.New("unexpected data after the top-level JSON object")
		}
	default:
		return nil, fmt.Errorf("unsupported format %q (use yaml or json)", format)
	}
	return newLibrary(f.Scripts)
}

// oneLine flattens a decoder's multi-line message (yaml lists each problem
// on its own line) so the error stays one line, and says "unknown field"
// rather than naming Go types the clinic's staff never see.
func oneLine(err error) error {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	return errors.New(yamlUnknownField.ReplaceAllString(msg, `unknown field "$1"`))
}

var yamlUnknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)

// jsonError adds the line of a JSON syntax or type error, which encoding/json
// reports only as a byte offset.
func jsonError(data []byte, err error) error {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
	}
	if off < 0 || off > int64(len(data)) {
		return oneLine(err)
	}
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	return fmt.Errorf("line %d: %s", line, oneLine(err))
}

// newLibrary validates and prepares scripts; they become the Library's.
func newLibrary(scripts []*Script) (*Library, error) {
	if len(scripts) == 0 {
		return nil, errors.New("scripts: none (at least one script is required)")
	}
	l := &Library{scripts: scripts, byKey: make(map[string]*Script)}
	for i, s := range scripts {
		if s == nil {
			return nil, fmt.Errorf("scripts[%d]: empty", i)
		}
		if err := s.validate(i == 0); err != nil {
			return nil, fmt.Errorf("%s: %w", label(s, i), err)
		}
	}
	first := scripts[0]
	for i, s := range scripts {
		name := label(s, i)
		if s.ID != first.ID {
			return nil, fmt.Errorf("%s: id %q differs from the first script's id %q (a file holds one disclosure, in one script per language)", name, s.ID, first.ID)
		}
		for j, o := range scripts[:i] {
			if strings.EqualFold(o.Language, s.Language) {
				return nil, fmt.Errorf("%s: language %s is already used by %s", name, s.Language, label(o, j))
			}
		}
		if s.LanguageKey == "" {
			continue
		}
		if o, ok := l.byKey[s.LanguageKey]; ok {
			return nil, fmt.Errorf("%s: language_key %q is already the language key of script %s/%s", name, s.LanguageKey, o.ID, o.Language)
		}
		// A language key must never also answer the question, in any
		// language: a caller pressing it must not be heard as consenting.
		for j, o := range scripts {
			if _, ok := o.DTMF[s.LanguageKey]; ok {
				return nil, fmt.Errorf("%s: language_key %q is also a dtmf answer key of %s", name, s.LanguageKey, label(o, j))
			}
		}
		l.byKey[s.LanguageKey] = s
	}
	for _, s := range scripts {
		s.p = s.compute()
	}
	return l, nil
}

// label names a script in errors: "script hipaa-consent/es-US", or by its
// position when the id or language is what is missing.
func label(s *Script, i int) string {
	if s.ID == "" || s.Language == "" {
		return fmt.Sprintf("script #%d (%s/%s)", i+1, orQ(s.ID), orQ(s.Language))
	}
	return "script " + s.ID + "/" + s.Language
}

func orQ(v string) string {
	if v == "" {
		return "?"
	}
	return v
}

// validate normalizes s in place and checks it. Spoken text is normalized to
// single spaces: Twilio speaks any run of whitespace as one space, so the
// normalized text is exactly what is spoken and what DisclosureText hashes,
// and the hash does not change when only the file's line wrapping does.
// isDefault is true for the library's first script, the only one a caller
// can reach without a language key.
func (s *Script) validate(isDefault bool) error {
	s.ID = strings.TrimSpace(s.ID)
	s.Version = strings.TrimSpace(s.Version)
	s.Language = strings.TrimSpace(s.Language)
	s.Voice = strings.TrimSpace(s.Voice)
	s.LanguageKey = strings.TrimSpace(s.LanguageKey)
	for _, t := range []*string{&s.Greeting, &s.LanguagePrompt, &s.Question, &s.Confirm, &s.NoResponse, &s.Hold} {
		*t = norm(*t)
	}
	for i := range s.Segments {
		s.Segments[i].Text = norm(s.Segments[i].Text)
	}
	for i := range s.Reprompts {
		s.Reprompts[i] = norm(s.Reprompts[i])
	}
	for d, t := range s.ReadBack {
		s.ReadBack[d] = norm(t)
	}
	for i := range s.Hints {
		s.Hints[i] = norm(s.Hints[i])
	}

	switch {
	case s.ID == "":
		return errors.New("id is empty")
	case s.Version == "":
		return errors.New("version is empty")
	case s.Language == "":
		return errors.New("language is empty")
	case !isLanguageTag(s.Language):
		return fmt.Errorf("language %q is not a BCP-47 tag like en-US", s.Language)
	case len(s.Segments) == 0:
		return errors.New("segments: none (at least one segment is required)")
	}
	interruptible := false
	for i, seg := range s.Segments {
		if seg.Text == "" {
			return fmt.Errorf("segments[%d].text is empty", i)
		}
		// Must-hear segments are spoken before the <Gather>; one after an
		// interruptible segment would be spoken out of order, and the text
		// heard would no longer be DisclosureText.
		if seg.MustHear && interruptible {
			return fmt.Errorf("segments[%d].must_hear: must-hear segments must all come before the interruptible ones", i)
		}
		interruptible = interruptible || !seg.MustHear
	}
	switch {
	case s.Question == "":
		return errors.New("question is empty")
	case len(s.Reprompts) == 0:
		return errors.New("reprompts: none (at least one re-prompt is required)")
	case len(s.Reprompts) > MaxReprompts:
		return fmt.Errorf("reprompts: %d given, at most %d are used", len(s.Reprompts), MaxReprompts)
	}
	for i, r := range s.Reprompts {
		if r == "" {
			return fmt.Errorf("reprompts[%d] is empty", i)
		}
	}
	if s.Confirm == "" {
		return errors.New("confirm is empty")
	}
	for d := range s.ReadBack {
		if d != consent.Granted && d != consent.Declined {
			return fmt.Errorf("read_back: unknown decision %q (use granted and declined)", d)
		}
	}
	for _, d := range []consent.Decision{consent.Granted, consent.Declined} {
		if s.ReadBack[d] == "" {
			return fmt.Errorf("read_back.%s is empty", d)
		}
	}
	if s.NoResponse == "" {
		return errors.New("no_response is empty")
	}
	if err := s.validateDTMF(); err != nil {
		return err
	}
	for i, h := range s.Hints {
		if h == "" {
			return fmt.Errorf("hints[%d] is empty", i)
		}
		// <Gather hints> is one comma-separated attribute.
		if strings.Contains(h, ",") {
			return fmt.Errorf("hints[%d] %q contains a comma (give each phrase as its own hint)", i, h)
		}
	}
	switch {
	case s.LanguageKey != "" && !isKey(s.LanguageKey):
		return fmt.Errorf("language_key %q is not a single key 0-9, * or #", s.LanguageKey)
	case s.LanguageKey != "" && s.LanguagePrompt == "":
		return errors.New("language_prompt is empty (it tells callers to press language_key)")
	case s.LanguageKey == "" && s.LanguagePrompt != "":
		return errors.New("language_key is empty (language_prompt names a key to press)")
	case s.LanguageKey == "" && !isDefault:
		return errors.New("language_key is empty (only the first script can do without one: callers could never choose this language)")
	}
	return nil
}

func (s *Script) validateDTMF() error {
	if len(s.DTMF) == 0 {
		s.DTMF = make(map[string]consent.Intent, len(defaultDTMF))
		for k, v := range defaultDTMF {
			s.DTMF[k] = v
		}
		return nil
	}
	var agree, decline bool
	for k, v := range s.DTMF {
		if !isKey(k) {
			return fmt.Errorf("dtmf: key %q is not a single key 0-9, * or #", k)
		}
		switch v {
		case consent.Agree:
			agree = true
		case consent.Decline:
			decline = true
		default:
			return fmt.Errorf("dtmf[%q]: %q is neither agree nor decline", k, v)
		}
	}
	switch {
	case !agree:
		return errors.New("dtmf: no key answers agree")
	case !decline:
		return errors.New("dtmf: no key answers decline")
	}
	return nil
}

func norm(s string) string { return strings.Join(strings.Fields(s), " ") }

func isKey(k string) bool {
	return len(k) == 1 && (k[0] >= '0' && k[0] <= '9' || k[0] == '*' || k[0] == '#')
}

// isLanguageTag is a light BCP-47 shape check (letters, then dash-separated
// alphanumeric subtags): enough to catch "en_US" or "English", which Twilio
// would reject mid-call.
func isLanguageTag(t string) bool {
	for i, sub := range strings.Split(t, "-") {
		if len(sub) == 0 || len(sub) > 8 || (i == 0 && (len(sub) < 2 || len(sub) > 3)) {
			return false
		}
		for _, r := range sub {
			letter := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
			if !letter && (i == 0 || r < '0' || r > '9') {
				return false
			}
		}
	}
	return true
}
