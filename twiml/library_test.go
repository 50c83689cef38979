package twiml

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"go/doc/comment"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/consentline/consentline/consent"
)

func TestBuiltin(t *testing.T) {
	l := Builtin()
	if got := len(l.Scripts()); got != 2 {
		t.Fatalf("Builtin has %d scripts, want 2", got)
	}
	en := l.Default()
	if en.ID != "hipaa-consent" || en.Language != "en-US" || en.Voice != "Polly.Joanna" || en.Version == "" {
		t.Errorf("default script = %s/%s %q voice %q", en.ID, en.Language, en.Version, en.Voice)
	}
	es, ok := l.ByLanguageKey("9")
	if !ok || es.Language != "es-US" || es.Voice != "Polly.Lupe" {
		t.Fatalf("ByLanguageKey(9) = %v, %v; want the es-US script", es, ok)
	}
	if es.LanguagePrompt != "Para español, oprima 9." {
		t.Errorf("es-US language prompt = %q", es.LanguagePrompt)
	}
	if got, ok := l.ByLanguage("ES-us"); !ok || got != es {
		t.Errorf("ByLanguage is not case-insensitive")
	}
	if _, ok := l.ByLanguage("fr-FR"); ok {
		t.Errorf("ByLanguage(fr-FR) found a script")
	}
	for _, k := range []string{"1", "2", ""} {
		if s, ok := l.ByLanguageKey(k); ok {
			t.Errorf("ByLanguageKey(%q) = %s, want none", k, s.Language)
		}
	}
	for _, s := range l.Scripts() {
		if len(s.Segments) < 2 || !s.Segments[0].MustHear || s.Segments[len(s.Segments)-1].MustHear {
			t.Errorf("%s: want must-hear segments first, then interruptible ones", s.Language)
		}
		if len(s.Reprompts) != 2 || s.Confirm == "" || s.NoResponse == "" || s.Hold == "" ||
			s.ReadBack[consent.Granted] == "" || s.ReadBack[consent.Declined] == "" || len(s.Hints) == 0 {
			t.Errorf("%s: incomplete built-in script", s.Language)
		}
		if s.Ref().ID != BuiltinID || s.Ref().Version != BuiltinVersion || s.Ref().Language != s.Language {
			t.Errorf("%s: Ref = %+v", s.Language, s.Ref())
		}
	}
	if !strings.Contains(en.Question, "yes I agree") || !strings.Contains(en.Question, "press 1") || !strings.Contains(en.Question, "press 2") {
		t.Errorf("en-US question = %q", en.Question)
	}
	if en.Ref().SHA256 == es.Ref().SHA256 {
		t.Errorf("en-US and es-US have the same hash")
	}
	// Each call builds its own Library: a caller cannot corrupt another's.
	if Builtin().Default() == en {
		t.Errorf("Builtin returned a shared Script")
	}
}

// exported strips the validation cache so scripts can be compared by content.
func exported(s *Script) Script {
	c := *s
	c.p = nil
	return c
}

// The example file must stay the built-in library word for word: it is what
// clinics copy, and a drift would make them believe they ship our wording.
func TestExampleFileIsBuiltin(t *testing.T) {
	l, err := Load(filepath.Join("testdata", "example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := Builtin().Scripts()
	got := l.Scripts()
	if len(got) != len(want) {
		t.Fatalf("example has %d scripts, built-in %d", len(got), len(want))
	}
	for i := range want {
		if g, w := exported(got[i]), exported(want[i]); !reflect.DeepEqual(g, w) {
			t.Errorf("example script %d differs from the built-in:\n got %+v\nwant %+v", i, g, w)
		}
		if got[i].Ref() != want[i].Ref() {
			t.Errorf("example script %d: Ref %+v, built-in %+v", i, got[i].Ref(), want[i].Ref())
		}
	}
}

// The package documentation's YAML example must be a valid file.
func TestDocExampleParses(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "doc.go", nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	var p comment.Parser
	d := p.Parse(f.Doc.Text())
	var example string
	for _, b := range d.Content {
		if c, ok := b.(*comment.Code); ok && strings.HasPrefix(c.Text, "scripts:") {
			example = c.Text
		}
	}
	if example == "" {
		t.Fatal("no YAML example starting with scripts: in the package doc")
	}
	l, err := Parse([]byte(example), "yaml")
	if err != nil {
		t.Fatalf("doc example: %v", err)
	}
	s := l.Default()
	if !s.Segments[0].MustHear || s.Segments[1].MustHear || len(s.Reprompts) != 2 || len(s.Hints) != 5 || s.Hold == "" {
		t.Errorf("doc example parsed as %+v", exported(s))
	}
}

func TestRef(t *testing.T) {
	s := Builtin().Default()
	text := s.DisclosureText()
	if !strings.HasPrefix(text, s.Segments[0].Text+"\n") || !strings.HasSuffix(text, "\n"+s.Question) {
		t.Errorf("DisclosureText = %q", text)
	}
	if n := strings.Count(text, "\n"); n != len(s.Segments) {
		t.Errorf("DisclosureText has %d line breaks, want %d", n, len(s.Segments))
	}
	sum := sha256.Sum256([]byte(text))
	if got := s.Ref().SHA256; got != hex.EncodeToString(sum[:]) {
		t.Errorf("Ref().SHA256 = %s, want sha256(DisclosureText) %x", got, sum)
	}

	// One word changed anywhere in the spoken text changes the hash.
	for _, edit := range []func(*Script){
		func(c *Script) { c.Segments[2].Text = strings.Replace(c.Segments[2].Text, "doctors", "physicians", 1) },
		func(c *Script) { c.Segments[0].Text = strings.Replace(c.Segments[0].Text, "treatment", "care", 1) },
		func(c *Script) { c.Question = strings.Replace(c.Question, "agree?", "consent?", 1) },
		func(c *Script) { c.Segments[1].MustHear = false; c.Segments[1].Text += " Really." },
	} {
		c := builtinEnglish()
		edit(c)
		l, err := newLibrary([]*Script{c})
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Default().Ref().SHA256; got == s.Ref().SHA256 {
			t.Errorf("hash unchanged after editing the text to %q", l.Default().DisclosureText())
		}
	}

	// Re-wrapping the text in the file does not.
	c := builtinEnglish()
	c.Segments[2].Text = strings.ReplaceAll(c.Segments[2].Text, " ", "\n   ") + "\n"
	c.Question = "  " + c.Question
	l, err := newLibrary([]*Script{c})
	if err != nil {
		t.Fatal(err)
	}
	if l.Default().Ref() != s.Ref() {
		t.Errorf("hash changed with whitespace only")
	}
}

// A copy of a validated Script must not answer with the original's cached
// hash once its text is changed.
func TestRefOfCopy(t *testing.T) {
	s := Builtin().Default()
	c := *s
	c.Question = "Is that all right?"
	if c.Ref().SHA256 == s.Ref().SHA256 {
		t.Errorf("copied script reused the original's hash")
	}
	if !strings.HasSuffix(c.DisclosureText(), "\nIs that all right?") {
		t.Errorf("copy DisclosureText = %q", c.DisclosureText())
	}
	// A Script built by hand (never validated) still works, uncached.
	h := &Script{ID: "x", Version: "1", Language: "en-US", Segments: []Segment{{Text: "One."}}, Question: "Two?"}
	sum := sha256.Sum256([]byte("One.\nTwo?"))
	if h.Ref().SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("hand-built Ref = %+v", h.Ref())
	}
}

func TestIntentForDigits(t *testing.T) {
	s := Builtin().Default()
	for d, want := range map[string]consent.Intent{
		"": consent.NoIntent, "1": consent.Agree, "2": consent.Decline,
		"3": consent.Unclear, "9": consent.Unclear, "#": consent.Unclear, "12": consent.Unclear,
	} {
		if got := s.IntentForDigits(d); got != want {
			t.Errorf("IntentForDigits(%q) = %q, want %q", d, got, want)
		}
	}
	c := &Script{DTMF: map[string]consent.Intent{"*": consent.Agree, "#": consent.Decline}}
	if c.IntentForDigits("*") != consent.Agree || c.IntentForDigits("#") != consent.Decline || c.IntentForDigits("1") != consent.Unclear {
		t.Errorf("custom DTMF map not used")
	}
	if (&Script{}).IntentForDigits("1") != consent.Agree {
		t.Errorf("a script without dtmf does not use the default keys")
	}
}

func TestTiming(t *testing.T) {
	for text, want := range map[string]int64{
		"":                      0,
		"   ":                   0,
		"Hello.":                400 + 350,
		"Hello there":           800 + 350, // no final stop: still one sentence
		"One. Two! Three?":      1200 + 3*350,
		"It costs 1.5 dollars.": 1600 + 350, // a decimal point is not a sentence end
		"¿Está de acuerdo? Sí.": 1600 + 2*350,
	} {
		if got := speakingMS(text); got != want {
			t.Errorf("speakingMS(%q) = %d, want %d", text, got, want)
		}
	}
	s := Builtin().Default()
	var must, rest int64
	for _, seg := range s.Segments {
		if seg.MustHear {
			must += speakingMS(seg.Text)
		} else {
			rest += speakingMS(seg.Text)
		}
	}
	rest += speakingMS(s.Question)
	if s.MustHearMS() != must || s.InterruptibleMS() != rest {
		t.Errorf("MustHearMS, InterruptibleMS = %d, %d; want %d, %d", s.MustHearMS(), s.InterruptibleMS(), must, rest)
	}
	// Sanity: the must-hear part of the built-in is short enough not to
	// lose callers, yet a real sentence or two.
	if must < 5_000 || must > 30_000 {
		t.Errorf("built-in must-hear estimate %d ms", must)
	}
	l := Builtin()
	want := speakingMS(s.Greeting) + speakingMS("Para español, oprima 9.") + 1000
	if got := l.GreetingMS(s); got != want {
		t.Errorf("GreetingMS = %d, want %d", got, want)
	}
}

// validScript is a minimal valid script as a file would hold it.
func validScript(lang string) map[string]any {
	return map[string]any{
		"id":       "hipaa-consent",
		"version":  "1",
		"language": lang,
		"segments": []any{
			map[string]any{"text": "Must hear.", "must_hear": true},
			map[string]any{"text": "May skip."},
		},
		"question":    "Agree?",
		"reprompts":   []any{"Agree? Press 1 or 2."},
		"confirm":     "Press 1 or 2.",
		"read_back":   map[string]any{"granted": "Granted.", "declined": "Declined."},
		"no_response": "Goodbye.",
	}
}

func parseJSON(t *testing.T, scripts ...map[string]any) (*Library, error) {
	t.Helper()
	data, err := json.Marshal(map[string]any{"scripts": scripts})
	if err != nil {
		t.Fatal(err)
	}
	return Parse(data, "json")
}

func TestValidationErrors(t *testing.T) {
	es := func() map[string]any {
		s := validScript("es-US")
		s["language_key"] = "9"
		s["language_prompt"] = "Para español, oprima 9."
		return s
	}
	cases := []struct {
		name   string
		edit   func(en, es map[string]any)
		script string // how the error names the script
		want   string // the field, as the file spells it
	}{
		{"no id", func(en, _ map[string]any) { delete(en, "id") }, "script #1 (?/en-US)", "id is empty"},
		{"blank id", func(en, _ map[string]any) { en["id"] = "  " }, "script #1 (?/en-US)", "id is empty"},
		{"no version", func(en, _ map[string]any) { delete(en, "version") }, "script hipaa-consent/en-US", "version is empty"},
		{"no language", func(_, es map[string]any) { delete(es, "language") }, "script #2 (hipaa-consent/?)", "language is empty"},
		{"bad language", func(en, _ map[string]any) { en["language"] = "en_US" }, "script hipaa-consent/en_US", "language \"en_US\""},
		{"no segments", func(en, _ map[string]any) { delete(en, "segments") }, "script hipaa-consent/en-US", "segments: none"},
		{"empty segment", func(_, es map[string]any) {
			es["segments"] = []any{map[string]any{"text": "Uno."}, map[string]any{"text": " \n "}}
		}, "script hipaa-consent/es-US", "segments[1].text is empty"},
		{"must-hear out of order", func(en, _ map[string]any) {
			en["segments"] = []any{map[string]any{"text": "A."}, map[string]any{"text": "B.", "must_hear": true}}
		}, "script hipaa-consent/en-US", "segments[1].must_hear"},
		{"no question", func(_, es map[string]any) { es["question"] = "" }, "script hipaa-consent/es-US", "question is empty"},
		{"no reprompts", func(en, _ map[string]any) { delete(en, "reprompts") }, "script hipaa-consent/en-US", "reprompts: none"},
		{"too many reprompts", func(en, _ map[string]any) { en["reprompts"] = []any{"a", "b", "c"} }, "script hipaa-consent/en-US", "reprompts: 3 given, at most 2"},
		{"empty reprompt", func(en, _ map[string]any) { en["reprompts"] = []any{"a", ""} }, "script hipaa-consent/en-US", "reprompts[1] is empty"},
		{"no confirm", func(en, _ map[string]any) { delete(en, "confirm") }, "script hipaa-consent/en-US", "confirm is empty"},
		{"no read_back", func(en, _ map[string]any) { delete(en, "read_back") }, "script hipaa-consent/en-US", "read_back.granted is empty"},
		{"no granted", func(en, _ map[string]any) { en["read_back"] = map[string]any{"declined": "D."} }, "script hipaa-consent/en-US", "read_back.granted is empty"},
		{"no declined", func(_, es map[string]any) { es["read_back"] = map[string]any{"granted": "G."} }, "script hipaa-consent/es-US", "read_back.declined is empty"},
		{"unknown decision", func(en, _ map[string]any) {
			en["read_back"] = map[string]any{"granted": "G.", "declined": "D.", "maybe": "M."}
		}, "script hipaa-consent/en-US", "read_back: unknown decision \"maybe\""},
		{"no no_response", func(en, _ map[string]any) { delete(en, "no_response") }, "script hipaa-consent/en-US", "no_response is empty"},
		{"dtmf bad key", func(en, _ map[string]any) { en["dtmf"] = map[string]any{"10": "agree", "2": "decline"} }, "script hipaa-consent/en-US", "dtmf: key \"10\""},
		{"dtmf bad intent", func(en, _ map[string]any) { en["dtmf"] = map[string]any{"1": "agree", "2": "maybe"} }, "script hipaa-consent/en-US", "dtmf[\"2\"]"},
		{"dtmf unclear intent", func(en, _ map[string]any) {
			en["dtmf"] = map[string]any{"1": "agree", "2": "decline", "3": "unclear"}
		}, "script hipaa-consent/en-US", "dtmf[\"3\"]"},
		{"dtmf no decline", func(en, _ map[string]any) { en["dtmf"] = map[string]any{"1": "agree"} }, "script hipaa-consent/en-US", "dtmf: no key answers decline"},
		{"dtmf no agree", func(en, _ map[string]any) { en["dtmf"] = map[string]any{"2": "decline"} }, "script hipaa-consent/en-US", "dtmf: no key answers agree"},
		{"hint with comma", func(en, _ map[string]any) { en["hints"] = []any{"yes", "yes, I agree"} }, "script hipaa-consent/en-US", "hints[1]"},
		{"empty hint", func(en, _ map[string]any) { en["hints"] = []any{""} }, "script hipaa-consent/en-US", "hints[0] is empty"},
		{"bad language key", func(_, es map[string]any) { es["language_key"] = "99" }, "script hipaa-consent/es-US", "language_key \"99\""},
		{"language key without prompt", func(_, es map[string]any) { delete(es, "language_prompt") }, "script hipaa-consent/es-US", "language_prompt is empty"},
		{"prompt without language key", func(en, _ map[string]any) { en["language_prompt"] = "For English, press 8." }, "script hipaa-consent/en-US", "language_key is empty"},
		{"second script unreachable", func(_, es map[string]any) {
			delete(es, "language_key")
			delete(es, "language_prompt")
		}, "script hipaa-consent/es-US", "language_key is empty"},
		{"language key is an answer key", func(_, es map[string]any) { es["language_key"] = "1" }, "script hipaa-consent/es-US", "language_key \"1\" is also a dtmf answer key of script hipaa-consent/en-US"},
		{"language key is another script's answer key", func(en, es map[string]any) {
			en["dtmf"] = map[string]any{"1": "agree", "2": "decline", "9": "agree"}
		}, "script hipaa-consent/es-US", "language_key \"9\" is also a dtmf answer key of script hipaa-consent/en-US"},
		{"language key twice", func(en, _ map[string]any) {
			en["language_key"] = "9"
			en["language_prompt"] = "For English, press 9."
		}, "script hipaa-consent/es-US", "language_key \"9\" is already the language key of script hipaa-consent/en-US"},
		{"two ids", func(_, es map[string]any) { es["id"] = "other" }, "script other/es-US", "id \"other\" differs"},
		{"same language twice", func(_, es map[string]any) { es["language"] = "EN-us" }, "script hipaa-consent/EN-us", "language EN-us is already used by script hipaa-consent/en-US"},
		{"unknown field", func(en, _ map[string]any) { en["must_haer"] = true }, "", "unknown field \"must_haer\""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			en, es := validScript("en-US"), es()
			c.edit(en, es)
			_, err := parseJSON(t, en, es)
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "disclosure: ") || !strings.Contains(msg, c.script+": ") || !strings.Contains(msg, c.want) {
				t.Errorf("error %q\nwant it to name %q and %q", msg, c.script, c.want)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
		})
	}

	// The valid base really is valid, with the default DTMF keys filled in.
	l, err := parseJSON(t, validScript("en-US"), es())
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]consent.Intent{"1": consent.Agree, "2": consent.Decline}; !reflect.DeepEqual(l.Default().DTMF, want) {
		t.Errorf("default DTMF = %v", l.Default().DTMF)
	}
	if _, err := parseJSON(t); err == nil || !strings.Contains(err.Error(), "scripts: none") {
		t.Errorf("empty library: %v", err)
	}
}

const yamlLibrary = `
scripts:
  - id: consent-x
    version: v7
    language: en-US
    voice: Polly.Matthew
    segments:
      - must_hear: true
        text: >-
          First part,
          folded.
      - text: Second part.
    question: Yes or no?
    reprompts: ["Yes or no, please?"]
    confirm: Press a key.
    read_back: {granted: Yes recorded., declined: No recorded.}
    no_response: Bye.
    dtmf:
      "*": agree
      "#": decline
    hints: ["yes", "no"]
`

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	l, err := Load(write("lib.yml", yamlLibrary))
	if err != nil {
		t.Fatal(err)
	}
	s := l.Default()
	if s.ID != "consent-x" || s.Voice != "Polly.Matthew" || s.Segments[0].Text != "First part, folded." || !s.Segments[0].MustHear {
		t.Errorf("yaml parsed as %+v", exported(s))
	}
	if s.IntentForDigits("*") != consent.Agree || s.IntentForDigits("#") != consent.Decline || s.IntentForDigits("1") != consent.Unclear {
		t.Errorf("yaml dtmf = %v", s.DTMF)
	}
	if s.DisclosureText() != "First part, folded.\nSecond part.\nYes or no?" {
		t.Errorf("DisclosureText = %q", s.DisclosureText())
	}

	// The same library as JSON loads to the same scripts.
	data, err := json.Marshal(map[string]any{"scripts": []*Script{s}})
	if err != nil {
		t.Fatal(err)
	}
	lj, err := Load(write("lib.json", string(data)))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(exported(lj.Default()), exported(s)) || lj.Default().Ref() != s.Ref() {
		t.Errorf("json round trip differs:\n%+v\n%+v", exported(lj.Default()), exported(s))
	}

	// Errors name the file, the script and the field, on one line.
	bad := write("x.yaml", strings.Replace(yamlLibrary, "question: Yes or no?", "question: ''", 1))
	_, err = Load(bad)
	if want := "disclosure file " + bad + ": script consent-x/en-US: question is empty"; err == nil || err.Error() != want {
		t.Errorf("Load error = %v\nwant %s", err, want)
	}
	_, err = Load(write("typo.yaml", strings.Replace(yamlLibrary, "must_hear", "must_haer", 1)))
	if want := "line 8: unknown field \"must_haer\""; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("misspelt key: %v, want %s", err, want)
	}
	for name, data := range map[string]string{
		"typo.yaml":     strings.Replace(yamlLibrary, "must_hear", "must_haer", 1),
		"two.yaml":      yamlLibrary + "---\n" + yamlLibrary,
		"syntax.yaml":   "scripts: [\n",
		"syntax.json":   "{\"scripts\": [\n  {\"id\": }\n]}",
		"type.json":     "{\"scripts\": [{\"id\": 5}]}",
		"trailing.json": "{\"scripts\": []} {}",
		"x.txt":         yamlLibrary,
	} {
		p := write(name, data)
		_, err := Load(p)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if msg := err.Error(); !strings.HasPrefix(msg, "disclosure file "+p+": ") || strings.Contains(msg, "\n") {
			t.Errorf("%s: error %q is not one line naming the file", name, msg)
		}
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
	_, err = Load(write("line.json", "{\"scripts\": [\n  {\"id\": }\n]}"))
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("json syntax error without its line: %v", err)
	}
}

func TestParseFormats(t *testing.T) {
	for _, f := range []string{"yaml", "YML", ".yaml"} {
		if _, err := Parse([]byte(yamlLibrary), f); err != nil {
			t.Errorf("Parse(%q): %v", f, err)
		}
	}
	if _, err := Parse([]byte(yamlLibrary), "toml"); err == nil {
		t.Errorf("Parse accepted toml")
	}
}
