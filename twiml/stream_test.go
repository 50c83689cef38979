package twiml

import (
	"reflect"
	"slices"
	"testing"
)

func streamURLs() GatherURLs {
	g := urls
	g.Stream = &Stream{
		Name:           "consent-hipaa",
		URL:            "wss://consent.example.com/voice/stream",
		StatusCallback: "https://consent.example.com/voice/stream-status",
		Parameters:     [][2]string{{"script", "hipaa"}, {"lang", "en-US"}},
	}
	g.MustHearDone = "https://consent.example.com/voice/heard?lang=en-US&t0=1"
	return g
}

// With a stream, the disclosure starts the stream before its first <Say>
// (after the greeting's language <Gather>), speaks the must-hear part and
// redirects to mark its end; the redirect's answer is the answer <Gather>.
func TestDisclosureWithStream(t *testing.T) {
	l := Builtin()
	s := l.Default()
	g := streamURLs()
	root := parseTwiML(t)(Incoming(l, s, langAction, g))
	got := names(root.Children)
	i := slices.Index(got, "Start")
	if i < 0 || got[len(got)-1] != "Redirect" || slices.Contains(got[i:], "Gather") || slices.Index(got, "Gather") > i {
		t.Fatalf("verbs %v: want the language <Gather>, <Start>, the must-hear <Say>s, <Redirect>", got)
	}
	start := root.Children[i]
	if len(start.Children) != 1 || start.Children[0].XMLName.Local != "Stream" {
		t.Fatalf("<Start> holds %v", names(start.Children))
	}
	stream := start.Children[0]
	want := map[string]string{"name": "consent-hipaa", "url": "wss://consent.example.com/voice/stream", "track": "both_tracks",
		"statusCallback": "https://consent.example.com/voice/stream-status", "statusCallbackMethod": "POST"}
	if !reflect.DeepEqual(stream.attrs(), want) {
		t.Errorf("<Stream> attrs %v, want %v", stream.attrs(), want)
	}
	var params [][2]string
	for _, p := range stream.Children {
		params = append(params, [2]string{p.attrs()["name"], p.attrs()["value"]})
	}
	if !reflect.DeepEqual(params, g.Stream.Parameters) {
		t.Errorf("parameters %v, want %v", params, g.Stream.Parameters)
	}
	p := s.prep()
	if says := len(root.Children) - i - 2; says != len(p.mustHear) {
		t.Errorf("%d verbs between <Start> and <Redirect>, want the %d must-hear <Say>s", says, len(p.mustHear))
	}
	if red := root.Children[len(root.Children)-1]; red.Text != g.MustHearDone {
		t.Errorf("<Redirect> to %q", red.Text)
	}

	after := parseTwiML(t)(AfterMustHear(s, g))
	if len(after.Children) != 1 {
		t.Fatalf("AfterMustHear: %v", names(after.Children))
	}
	assertAnswerGather(t, after.Children[0], s)

	// A disclosure restarted in another language stops the earlier stream.
	g.Stream.Stop = "consent-other"
	root = parseTwiML(t)(Disclosure(s, g))
	if got := names(root.Children); got[0] != "Stop" || got[1] != "Start" {
		t.Fatalf("restart: verbs %v, want <Stop> then <Start>", got)
	}
	if n := root.Children[0].Children; len(n) != 1 || n[0].attrs()["name"] != "consent-other" {
		t.Errorf("<Stop> does not name the earlier stream")
	}
}

func TestStreamURLChecked(t *testing.T) {
	s := Builtin().Default()
	for _, bad := range []string{"https://x.example/voice/stream", "wss://x.example/voice/stream?call=1", "wss:///voice/stream", ""} {
		g := streamURLs()
		g.Stream.URL = bad
		if _, err := Disclosure(s, g); err == nil {
			t.Errorf("stream URL %q accepted", bad)
		}
	}
	g := streamURLs()
	g.MustHearDone = "/voice/heard"
	if _, err := Disclosure(s, g); err == nil {
		t.Error("relative must-hear redirect accepted")
	}
}
