package twiml

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/consentline/consentline/consent"
	"github.com/twilio/twilio-go/twiml"
)

// node is a generic TwiML element, parsed back with encoding/xml so the tests
// check what Twilio will read, not the bytes we meant to write.
type node struct {
	XMLName  xml.Name
	Attrs    []xml.Attr `xml:",any,attr"`
	Text     string     `xml:",chardata"`
	Children []node     `xml:",any"`
}

func (n node) attr(name string) (string, bool) {
	for _, a := range n.Attrs {
		if a.Name.Local == name {
			return a.Value, true
		}
	}
	return "", false
}

// attrs returns the attributes as a map (twilio-go writes them in map order,
// so their order is not stable).
func (n node) attrs() map[string]string {
	m := make(map[string]string, len(n.Attrs))
	for _, a := range n.Attrs {
		m[a.Name.Local] = a.Value
	}
	return m
}

// normalized strips what encoding/xml leaves order-dependent, for comparing
// two documents' elements.
func (n node) normalized() node {
	n.Attrs = slices.Clone(n.Attrs)
	slices.SortFunc(n.Attrs, func(a, b xml.Attr) int { return strings.Compare(a.Name.Local, b.Name.Local) })
	kids := make([]node, len(n.Children))
	for i, c := range n.Children {
		kids[i] = c.normalized()
	}
	n.Children = kids
	return n
}

// parseTwiML(t)(Render(...)) parses a render's document, failing t on a
// render error or invalid XML.
func parseTwiML(t *testing.T) func(doc []byte, err error) node {
	return func(doc []byte, err error) node {
		t.Helper()
		return parseDoc(t, doc, err)
	}
}

func parseDoc(t *testing.T, doc []byte, err error) node {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(doc, []byte(`<?xml version="1.0" encoding="UTF-8"?>`)) {
		t.Errorf("no XML declaration: %s", doc)
	}
	var root node
	if err := xml.Unmarshal(doc, &root); err != nil {
		t.Fatalf("invalid XML: %v\n%s", err, doc)
	}
	if root.XMLName.Local != "Response" {
		t.Fatalf("root is <%s>", root.XMLName.Local)
	}
	return root
}

func names(ns []node) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.XMLName.Local
	}
	return out
}

// Callback URLs as the IVR builds them: absolute, with a query joined by &.
var urls = GatherURLs{
	Action:        "https://consent.example.com/voice/answer?lang=en-US&attempt=0&t0=1767225600000",
	PartialResult: "https://consent.example.com/voice/partial?lang=en-US&t0=1767225600000",
}

const langAction = "https://consent.example.com/voice/language?a=1&b=<2>"

// assertSay checks a <Say> speaks text in s's voice and language.
func assertSay(t *testing.T, n node, s *Script, text string) {
	t.Helper()
	if n.XMLName.Local != "Say" {
		t.Fatalf("<%s>, want <Say> %q", n.XMLName.Local, text)
	}
	if n.Text != text {
		t.Errorf("<Say> = %q, want %q", n.Text, text)
	}
	if want := map[string]string{"voice": s.Voice, "language": s.Language}; !reflect.DeepEqual(n.attrs(), want) {
		t.Errorf("<Say %q> attrs = %v, want %v", text, n.attrs(), want)
	}
}

func assertAnswerGather(t *testing.T, g node, s *Script) {
	t.Helper()
	if g.XMLName.Local != "Gather" {
		t.Fatalf("<%s>, want <Gather>", g.XMLName.Local)
	}
	want := map[string]string{
		"input":                 "speech dtmf",
		"bargeIn":               "true",
		"numDigits":             "1",
		"speechTimeout":         "auto",
		"language":              s.Language,
		"hints":                 strings.Join(s.Hints, ","),
		"partialResultCallback": urls.PartialResult,
		"action":                urls.Action,
		"method":                "POST",
		"actionOnEmptyResult":   "true",
	}
	if got := g.attrs(); !reflect.DeepEqual(got, want) {
		t.Errorf("answer <Gather> attrs:\n got %v\nwant %v", got, want)
	}
}

func TestDisclosure(t *testing.T) {
	for _, s := range Builtin().Scripts() {
		t.Run(s.Language, func(t *testing.T) {
			root := parseTwiML(t)(Disclosure(s, urls))
			var must, rest []string
			for _, seg := range s.Segments {
				if seg.MustHear {
					must = append(must, seg.Text)
				} else {
					rest = append(rest, seg.Text)
				}
			}
			rest = append(rest, s.Question)

			if len(root.Children) != len(must)+1 {
				t.Fatalf("children %v, want %d must-hear <Say>s then a <Gather>", names(root.Children), len(must))
			}
			// Must-hear segments are top-level: no Gather can cut them.
			for i, text := range must {
				assertSay(t, root.Children[i], s, text)
			}
			g := root.Children[len(must)]
			assertAnswerGather(t, g, s)
			if len(g.Children) != len(rest) {
				t.Fatalf("<Gather> holds %v, want %d <Say>s", names(g.Children), len(rest))
			}
			for i, text := range rest {
				assertSay(t, g.Children[i], s, text)
			}
		})
	}
}

// No must-hear text may appear inside any <Gather>, whatever the document.
func TestMustHearNeverInsideGather(t *testing.T) {
	l := Builtin()
	for _, s := range l.Scripts() {
		in, err := Incoming(l, s, langAction, urls)
		root := parseTwiML(t)(in, err)
		var walk func(n node, inGather bool)
		walk = func(n node, inGather bool) {
			inGather = inGather || n.XMLName.Local == "Gather"
			for _, seg := range s.Segments {
				if seg.MustHear && inGather && n.XMLName.Local == "Say" && n.Text == seg.Text {
					t.Errorf("%s: must-hear %q inside a <Gather>", s.Language, seg.Text)
				}
			}
			for _, c := range n.Children {
				walk(c, inGather)
			}
		}
		walk(root, false)
	}
}

func TestIncoming(t *testing.T) {
	l := Builtin()
	en := l.Default()
	es, _ := l.ByLanguage("es-US")
	root := parseTwiML(t)(Incoming(l, en, langAction, urls))
	if len(root.Children) < 2 {
		t.Fatalf("children %v", names(root.Children))
	}
	g := root.Children[0]
	want := map[string]string{"input": "dtmf", "numDigits": "1", "timeout": "1", "action": langAction, "method": "POST"}
	if g.XMLName.Local != "Gather" || !reflect.DeepEqual(g.attrs(), want) {
		t.Errorf("language gather <%s %v>, want %v", g.XMLName.Local, g.attrs(), want)
	}
	if len(g.Children) != 2 {
		t.Fatalf("language gather holds %v, want the greeting and the Spanish prompt", names(g.Children))
	}
	assertSay(t, g.Children[0], en, en.Greeting)
	// The Spanish prompt is spoken by the Spanish voice.
	assertSay(t, g.Children[1], es, "Para español, oprima 9.")

	// After the language gather comes exactly the disclosure.
	disc := parseTwiML(t)(Disclosure(en, urls))
	if got, want := root.normalized().Children[1:], disc.normalized().Children; !reflect.DeepEqual(got, want) {
		t.Errorf("Incoming after the language gather:\n got %+v\nwant %+v", got, want)
	}

	// Started in Spanish, the English script is offered only if it has a key.
	root = parseTwiML(t)(Incoming(l, es, langAction, urls))
	assertSay(t, root.Children[0], es, es.Greeting)
	assertSay(t, root.Children[1], es, es.Segments[0].Text)
}

func TestIncomingOneLanguage(t *testing.T) {
	l, err := newLibrary([]*Script{builtinEnglish()})
	if err != nil {
		t.Fatal(err)
	}
	s := l.Default()
	// No language to choose: no language gather, and no languageAction needed.
	root := parseTwiML(t)(Incoming(l, s, "", urls))
	assertSay(t, root.Children[0], s, s.Greeting)
	disc := parseTwiML(t)(Disclosure(s, urls))
	if got, want := root.normalized().Children[1:], disc.normalized().Children; !reflect.DeepEqual(got, want) {
		t.Errorf("Incoming without languages is not greeting + disclosure")
	}
	if got := l.GreetingMS(s); got != speakingMS(s.Greeting) {
		t.Errorf("GreetingMS = %d, want the greeting alone", got)
	}
}

// URLs with & and < come back exactly after an XML round trip.
func TestURLEscaping(t *testing.T) {
	l := Builtin()
	s := l.Default()
	doc, err := Incoming(l, s, langAction, urls)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(doc, []byte("&attempt")) || !bytes.Contains(doc, []byte("&amp;attempt")) {
		t.Errorf("& not escaped: %s", doc)
	}
	root := parseTwiML(t)(doc, nil)
	if got, _ := root.Children[0].attr("action"); got != langAction {
		t.Errorf("language action = %q, want %q", got, langAction)
	}
	g := root.Children[len(root.Children)-1]
	if got, _ := g.attr("action"); got != urls.Action {
		t.Errorf("action = %q, want %q", got, urls.Action)
	}
	if got, _ := g.attr("partialResultCallback"); got != urls.PartialResult {
		t.Errorf("partialResultCallback = %q, want %q", got, urls.PartialResult)
	}
	redirect := "https://consent.example.com/voice/hold?lang=es-US&n=2"
	root = parseTwiML(t)(Hold(s, redirect))
	if r := root.Children[len(root.Children)-1]; r.XMLName.Local != "Redirect" || r.Text != redirect {
		t.Errorf("redirect = <%s>%q, want %q", r.XMLName.Local, r.Text, redirect)
	}
}

func TestURLsMustBeAbsolute(t *testing.T) {
	l := Builtin()
	s := l.Default()
	abs := "https://consent.example.com/voice/x?a=1&b=2"
	for _, bad := range []string{"", "/voice/answer", "voice/answer", "https://", "https:///x", "ftp://host/x"} {
		if _, err := Disclosure(s, GatherURLs{Action: bad}); err == nil {
			t.Errorf("Disclosure accepted action %q", bad)
		}
		if _, err := Reprompt(s, 1, GatherURLs{Action: bad}); err == nil {
			t.Errorf("Reprompt accepted action %q", bad)
		}
		if _, err := Confirm(s, bad); err == nil {
			t.Errorf("Confirm accepted action %q", bad)
		}
		if _, err := Hold(s, bad); err == nil {
			t.Errorf("Hold accepted redirect %q", bad)
		}
		if _, err := Incoming(l, s, bad, urls); err == nil {
			t.Errorf("Incoming accepted language action %q", bad)
		}
		if bad != "" {
			if _, err := Disclosure(s, GatherURLs{Action: abs, PartialResult: bad}); err == nil {
				t.Errorf("Disclosure accepted partial result %q", bad)
			}
		}
	}
	// Without a partial-result URL the attribute is left off.
	root := parseTwiML(t)(Disclosure(s, GatherURLs{Action: "http://localhost:8080/voice/answer"}))
	if _, ok := root.Children[len(root.Children)-1].attr("partialResultCallback"); ok {
		t.Errorf("empty partialResultCallback rendered")
	}
}

func TestReprompt(t *testing.T) {
	s := Builtin().Default()
	for attempt, want := range map[int]string{-1: s.Reprompts[0], 0: s.Reprompts[0], 1: s.Reprompts[0], 2: s.Reprompts[1], 3: s.Reprompts[1], 99: s.Reprompts[1]} {
		root := parseTwiML(t)(Reprompt(s, attempt, urls))
		if len(root.Children) != 1 {
			t.Fatalf("attempt %d: children %v, want one <Gather>", attempt, names(root.Children))
		}
		g := root.Children[0]
		assertAnswerGather(t, g, s)
		if len(g.Children) != 1 {
			t.Fatalf("attempt %d: <Gather> holds %v", attempt, names(g.Children))
		}
		assertSay(t, g.Children[0], s, want)
	}
}

func TestConfirm(t *testing.T) {
	s, _ := Builtin().ByLanguage("es-US")
	action := "https://consent.example.com/voice/confirm?lang=es-US&heard=1"
	root := parseTwiML(t)(Confirm(s, action))
	if len(root.Children) != 1 {
		t.Fatalf("children %v", names(root.Children))
	}
	g := root.Children[0]
	want := map[string]string{"input": "dtmf", "numDigits": "1", "action": action, "method": "POST", "actionOnEmptyResult": "true"}
	if g.XMLName.Local != "Gather" || !reflect.DeepEqual(g.attrs(), want) {
		t.Errorf("<%s %v>, want <Gather %v>", g.XMLName.Local, g.attrs(), want)
	}
	if len(g.Children) != 1 {
		t.Fatalf("<Gather> holds %v", names(g.Children))
	}
	assertSay(t, g.Children[0], s, s.Confirm)
}

func TestClosings(t *testing.T) {
	s, _ := Builtin().ByLanguage("es-US")
	for name, c := range map[string]struct {
		render func() ([]byte, error)
		text   string
	}{
		"granted":     {func() ([]byte, error) { return ReadBack(s, consent.Granted) }, s.ReadBack[consent.Granted]},
		"declined":    {func() ([]byte, error) { return ReadBack(s, consent.Declined) }, s.ReadBack[consent.Declined]},
		"no_response": {func() ([]byte, error) { return ReadBack(s, consent.NoResponse) }, s.NoResponse},
		"NoResponse":  {func() ([]byte, error) { return NoResponse(s) }, s.NoResponse},
	} {
		t.Run(name, func(t *testing.T) {
			root := parseTwiML(t)(c.render())
			if got := names(root.Children); !reflect.DeepEqual(got, []string{"Say", "Hangup"}) {
				t.Fatalf("children %v, want Say, Hangup", got)
			}
			assertSay(t, root.Children[0], s, c.text)
		})
	}
	if _, err := ReadBack(s, "maybe"); err == nil {
		t.Errorf("ReadBack of an unknown decision succeeded")
	}
}

func TestHold(t *testing.T) {
	s := Builtin().Default()
	redirect := "https://consent.example.com/voice/hold?lang=en-US&n=1"
	root := parseTwiML(t)(Hold(s, redirect))
	if got := names(root.Children); !reflect.DeepEqual(got, []string{"Say", "Pause", "Redirect"}) {
		t.Fatalf("children %v", got)
	}
	assertSay(t, root.Children[0], s, s.Hold)
	if got := root.Children[1].attrs(); !reflect.DeepEqual(got, map[string]string{"length": "1"}) {
		t.Errorf("<Pause %v>", got)
	}
	if got := root.Children[2].attrs(); !reflect.DeepEqual(got, map[string]string{"method": "POST"}) {
		t.Errorf("<Redirect %v>", got)
	}

	// Without a hold line: silence, never an empty <Say>.
	c := *s
	c.Hold = ""
	root = parseTwiML(t)(Hold(&c, redirect))
	if got := names(root.Children); !reflect.DeepEqual(got, []string{"Pause", "Redirect"}) {
		t.Errorf("children %v", got)
	}
}

// The hold spliced into its per-script template is the document the
// renderer makes, for plain URLs (spliced) and others (rendered). (Not byte
// for byte: twilio-go writes attributes in map order.)
func TestHoldTemplateMatchesRender(t *testing.T) {
	urls := []string{
		"https://consent.example.com/voice/resume?attempt=0&lang=en-US&t0=1800000000000",
		"https://consent.example.com/voice/resume",
		"https://h.example/p?a=1&&b=%20&c=~!$()*+,;=:@/?",
		"http://localhost:8080/voice/resume?x='1'",
		`https://h.example/p?q="x"<y>`,
		"https://h.example/p?ü=ß&x=\t",
		"https://h.example/p?tab=\there",
	}
	for _, s := range Builtin().Scripts() {
		if s.p == nil || s.p.hold.prefix == "" {
			t.Fatalf("script %s has no hold template", s.ID)
		}
		for _, u := range urls {
			got := parseTwiML(t)(Hold(s, u)).normalized()
			want := parseTwiML(t)(renderHold(s, u)).normalized()
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s, %q:\n got %+v\nwant %+v", s.Language, u, got, want)
			}
			if u, got := urls[0], parseTwiML(t)(Hold(s, urls[0])).Children; got[len(got)-1].Text != u {
				t.Errorf("redirect %q, want %q", got[len(got)-1].Text, u)
			}
		}
	}
}

func TestEmpty(t *testing.T) {
	want, err := twiml.Voice(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(Empty()); got != want {
		t.Errorf("Empty = %s, want %s", got, want)
	}
	e := Empty()
	e[0] = 'X'
	if Empty()[0] != '<' {
		t.Errorf("Empty returns shared bytes")
	}
	root := parseTwiML(t)(Empty(), nil)
	if len(root.Children) != 0 {
		t.Errorf("Empty has children")
	}
}

// Renders share the scripts' prepared <Say>s; run under -race.
func TestConcurrentRenders(t *testing.T) {
	l := Builtin()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			s := l.Scripts()[i%2]
			g := GatherURLs{Action: fmt.Sprintf("https://x.example/a?i=%d&j=1", i)}
			for range 50 {
				doc, err := Incoming(l, s, langAction, g)
				if err != nil || !bytes.Contains(doc, []byte(fmt.Sprintf("i=%d&amp;j=1", i))) {
					t.Errorf("render %d: %v %s", i, err, doc)
					return
				}
				_ = s.Ref()
			}
		})
	}
	wg.Wait()
}

func BenchmarkDisclosure(b *testing.B) {
	s := Builtin().Default()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Disclosure(s, urls); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRef(b *testing.B) {
	s := Builtin().Default()
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Ref()
	}
}
