package ivr_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/ivr"
)

func TestIncomingTwiML(t *testing.T) {
	h := newHarness(t, t.TempDir())
	resp, err := h.call("CAincoming").Start(context.Background(), ivr.PathIncoming)
	if err != nil {
		t.Fatal(err)
	}
	script := h.lib.Default()

	var mustHear, spanishOffered bool
	for _, said := range resp.Spoken() {
		if strings.HasPrefix(said.Language, "es") {
			spanishOffered = true
		}
		for _, seg := range script.Segments {
			if seg.MustHear && said.Text == strings.TrimSpace(seg.Text) {
				mustHear = true
				if said.Interruptible {
					t.Errorf("must-hear segment is inside a Gather: %q", said.Text)
				}
			}
		}
	}
	if !mustHear {
		t.Errorf("no must-hear segment spoken:\n%s", resp.Raw)
	}
	if !spanishOffered {
		t.Errorf("the greeting does not offer Spanish:\n%s", resp.Raw)
	}
	g, ok := resp.SpeechGather()
	if !ok {
		t.Fatalf("no speech Gather:\n%s", resp.Raw)
	}
	for attr, want := range map[string]string{"input": "speech dtmf", "bargeIn": "true", "language": script.Language} {
		if got := g.Attr(attr); got != want {
			t.Errorf("Gather %s = %q, want %q", attr, got, want)
		}
	}
	for _, attr := range []string{"action", "partialResultCallback"} {
		if !strings.HasPrefix(g.Attr(attr), publicBase+"/voice/") {
			t.Errorf("Gather %s = %q, want an absolute URL on %s", attr, g.Attr(attr), publicBase)
		}
	}
	if g.Attr("hints") == "" {
		t.Error("Gather has no hints")
	}
}

func TestDecisionPaths(t *testing.T) {
	h := newHarness(t, t.TempDir())
	cases := []struct {
		name       string
		answer     url.Values
		decision   consent.Decision
		source     consent.Source
		confidence bool
	}{
		{"speech grant", url.Values{"SpeechResult": {"Yes, I agree."}, "Confidence": {"0.92"}}, consent.Granted, consent.SourceSpeech, true},
		{"speech decline", url.Values{"SpeechResult": {"No, I do not agree."}, "Confidence": {"0.88"}}, consent.Declined, consent.SourceSpeech, true},
		{"negated consent", url.Values{"SpeechResult": {"I can't consent"}, "Confidence": {"0.9"}}, consent.Declined, consent.SourceSpeech, true},
		{"key 1", url.Values{"Digits": {"1"}}, consent.Granted, consent.SourceDTMF, false},
		{"key 2", url.Values{"Digits": {"2"}}, consent.Declined, consent.SourceDTMF, false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := h.call(fmt.Sprintf("CApath%02d", i))
			g := h.start(c)
			resp := h.answer(c, g, tc.answer)
			if !resp.HangsUp() {
				t.Fatalf("read-back does not hang up:\n%s", resp.Raw)
			}
			want := h.lib.Default().ReadBack[tc.decision]
			if said := resp.Spoken(); len(said) == 0 || said[0].Text != strings.TrimSpace(want) {
				t.Errorf("read-back = %+v, want %q", said, want)
			}
			rec := h.record(c.SID)
			if rec.Decision != tc.decision || rec.Source != tc.source || (rec.Confidence != nil) != tc.confidence {
				t.Errorf("record = %+v, want %s from %s (confidence %v)", rec, tc.decision, tc.source, tc.confidence)
			}
			if n := h.records(c.SID); n != 1 {
				t.Errorf("%d records, want 1", n)
			}
		})
	}
}

func TestRecordSealsPHI(t *testing.T) {
	h := newHarness(t, t.TempDir())
	c := h.call("CAsealed")
	h.answer(c, h.start(c), url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.9"}})
	rec := h.record(c.SID)
	for name, f := range map[string]struct {
		sealed consent.Sealed
		plain  string
	}{consent.FieldFrom: {rec.From, c.From}, consent.FieldTo: {rec.To, c.To}, consent.FieldTranscript: {rec.Transcript, "yes I agree"}} {
		if strings.Contains(string(f.sealed), f.plain) || strings.Count(string(f.sealed), ".") != 4 {
			t.Errorf("%s is not a JWE: %q", name, f.sealed)
		}
		if got, err := h.keys.OpenFor(consent.RecordBinding(rec.CallSID, rec.Script.ID, name), f.sealed); err != nil || got != f.plain {
			t.Errorf("%s opens to %q, %v; want %q", name, got, err, f.plain)
		}
	}
	if rec.PatientRef == "" || strings.Contains(rec.PatientRef, "4155550123") {
		t.Errorf("patient_ref = %q, want a pseudonym", rec.PatientRef)
	}
	// Nothing in the database file holds the caller's number in the clear.
	var n int
	if err := h.store.DB().QueryRow(`SELECT count(*) FROM consent_records WHERE from_sealed LIKE '%4155550123%' OR transcript_sealed LIKE '%agree%'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("plaintext PHI at rest: %d rows, %v", n, err)
	}
}

func TestUnclearRepromptsThenNoResponse(t *testing.T) {
	h := newHarness(t, t.TempDir())
	c := h.call("CAunclear")
	g := h.start(c)
	script := h.lib.Default()
	for attempt := 1; attempt <= 2; attempt++ {
		resp := h.answer(c, g, url.Values{"SpeechResult": {"what?"}, "Confidence": {"0.95"}})
		var ok bool
		if g, ok = resp.SpeechGather(); !ok {
			t.Fatalf("attempt %d: no re-prompt Gather:\n%s", attempt, resp.Raw)
		}
		if said := resp.Spoken(); len(said) != 1 || said[0].Text != strings.TrimSpace(script.Reprompts[min(attempt, len(script.Reprompts))-1]) {
			t.Errorf("attempt %d: re-prompt = %+v", attempt, said)
		}
		if n := h.records(c.SID); n != 0 {
			t.Fatalf("attempt %d: %d records before the caller ran out of tries", attempt, n)
		}
	}
	resp := h.answer(c, g, url.Values{"SpeechResult": {"agent"}, "Confidence": {"0.95"}})
	if !resp.HangsUp() || resp.Spoken()[0].Text != strings.TrimSpace(script.NoResponse) {
		t.Fatalf("third unclear answer: want the polite close:\n%s", resp.Raw)
	}
	if rec := h.record(c.SID); rec.Decision != consent.NoResponse {
		t.Errorf("decision = %s, want no_response", rec.Decision)
	}
}

func TestLowConfidenceIsUnclear(t *testing.T) {
	h := newHarness(t, t.TempDir())
	c := h.call("CAlowconf")
	resp := h.answer(c, h.start(c), url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.40"}})
	if _, ok := resp.SpeechGather(); !ok || resp.HangsUp() {
		t.Fatalf("low confidence should re-prompt:\n%s", resp.Raw)
	}
	if n := h.records(c.SID); n != 0 {
		t.Errorf("low-confidence speech recorded %d records", n)
	}
}

func TestMissingConfidenceAsksForKey(t *testing.T) {
	h := newHarness(t, t.TempDir())
	c := h.call("CAnoconf")
	resp := h.answer(c, h.start(c), url.Values{"SpeechResult": {"yes I agree"}})
	g, ok := resp.Find("Gather")
	if !ok || g.Attr("input") != "dtmf" {
		t.Fatalf("speech without Confidence should ask for a key:\n%s", resp.Raw)
	}
	if n := h.records(c.SID); n != 0 {
		t.Fatalf("recorded %d before the key press", n)
	}
	resp = h.answer(c, g, url.Values{"Digits": {"1"}})
	if rec := h.record(c.SID); rec.Decision != consent.Granted || rec.Source != consent.SourceDTMF || !resp.HangsUp() {
		t.Errorf("after key 1: record %+v, hangs up %v", rec, resp.HangsUp())
	}
}

func TestSpanish(t *testing.T) {
	h := newHarness(t, t.TempDir())
	c := h.call("CAspanish")
	resp, err := c.Start(context.Background(), ivr.PathIncoming)
	if err != nil {
		t.Fatal(err)
	}
	lang, ok := resp.Find("Gather")
	if !ok || lang.Attr("input") != "dtmf" {
		t.Fatalf("no language Gather:\n%s", resp.Raw)
	}
	es, ok := h.lib.ByLanguage("es-US")
	if !ok {
		t.Fatal("no es-US script")
	}
	resp, err = c.TwiML(context.Background(), lang.Attr("action"), c.Params(url.Values{"Digits": {es.LanguageKey}}))
	if err != nil {
		t.Fatal(err)
	}
	g, ok := resp.SpeechGather()
	if !ok || g.Attr("language") != "es-US" {
		t.Fatalf("Spanish disclosure Gather:\n%s", resp.Raw)
	}
	h.answer(c, g, url.Values{"SpeechResult": {"no estoy de acuerdo"}, "Confidence": {"0.9"}})
	rec := h.record(c.SID)
	if rec.Decision != consent.Declined || rec.Script.Language != "es-US" || rec.Script.SHA256 != es.Ref().SHA256 {
		t.Errorf("record = %+v, want declined on the es-US script", rec)
	}
}

// A partial result never decides, however stable: the caller says "Yes,
// can you repeat that? No, I do not agree." and the record must say what the
// final answer said, not the stable "yes" in the middle.
func TestPartialNeverDecides(t *testing.T) {
	h := newHarness(t, t.TempDir())
	c := h.call("CApartial")
	g := h.start(c)
	h.clock.advance(3 * time.Second)
	for _, p := range []struct{ text, stability string }{
		{"yes", "0.92"}, {"yes I agree", "0.99"}, {"yes can you repeat that", "0.9"},
		{"yes can you repeat that no I do not agree", "0.95"},
	} {
		status, _, err := h.twilio.Post(context.Background(), g.Attr("partialResultCallback"),
			c.Params(url.Values{"UnstableSpeechResult": {p.text}, "Stability": {p.stability}}))
		if err != nil || status != http.StatusNoContent {
			t.Fatalf("partial %q: %d %v", p.text, status, err)
		}
		if n := h.records(c.SID); n != 0 {
			t.Fatalf("partial %q (stability %s) recorded %d", p.text, p.stability, n)
		}
	}
	// The final result contradicts itself: asked again, nothing recorded.
	resp := h.answer(c, g, url.Values{"SpeechResult": {"Yes, can you repeat that? No, I do not agree."}, "Confidence": {"0.93"}})
	if n := h.records(c.SID); n != 0 || resp.HangsUp() {
		t.Fatalf("a self-contradicting final answer recorded %d:\n%s", n, resp.Raw)
	}
	g2, ok := resp.SpeechGather()
	if !ok {
		t.Fatalf("no re-prompt after a contradicting answer:\n%s", resp.Raw)
	}
	resp = h.answer(c, g2, url.Values{"SpeechResult": {"No, I do not agree."}, "Confidence": {"0.93"}})
	rec := h.record(c.SID)
	if rec.Decision != consent.Declined || rec.Source != consent.SourceSpeech {
		t.Fatalf("record = %+v, want declined from the final speech result", rec)
	}
	if !resp.HangsUp() || resp.Spoken()[0].Text != strings.TrimSpace(h.lib.Default().ReadBack[consent.Declined]) {
		t.Errorf("final result did not read back the decline:\n%s", resp.Raw)
	}
}

func TestBargeInEstimate(t *testing.T) {
	h := newHarness(t, t.TempDir())
	script := h.lib.Default()
	total := script.MustHearMS() + script.InterruptibleMS()
	greeting := time.Duration(h.lib.GreetingMS(script)) * time.Millisecond

	early := h.call("CAearly")
	g := h.start(early)
	h.clock.advance(greeting + time.Duration(total/2)*time.Millisecond)
	h.answer(early, g, url.Values{"Digits": {"1"}})
	if rec := h.record(early.SID); !rec.BargeIn || rec.DisclosureHeardMS != total/2 {
		t.Errorf("answer halfway: barge_in %v heard %d, want true %d", rec.BargeIn, rec.DisclosureHeardMS, total/2)
	}

	late := h.call("CAlate")
	g = h.start(late)
	h.clock.advance(greeting + time.Duration(total+2000)*time.Millisecond)
	h.answer(late, g, url.Values{"Digits": {"1"}})
	if rec := h.record(late.SID); rec.BargeIn || rec.DisclosureHeardMS != total {
		t.Errorf("answer after the end: barge_in %v heard %d, want false %d", rec.BargeIn, rec.DisclosureHeardMS, total)
	}
}

func TestStatusCallback(t *testing.T) {
	h := newHarness(t, t.TempDir())
	ctx := context.Background()

	silent := h.call("CAsilent")
	h.start(silent)
	status, _, err := h.twilio.Post(ctx, publicBase+ivr.PathStatus, silent.Params(url.Values{"CallStatus": {"completed"}}))
	if err != nil || status != http.StatusNoContent {
		t.Fatalf("status: %d %v", status, err)
	}
	if rec := h.record(silent.SID); rec.Decision != consent.NoResponse || rec.Source != consent.SourceStatusCallback {
		t.Errorf("call ended silently: %+v", rec)
	}

	decided := h.call("CAdecided")
	h.answer(decided, h.start(decided), url.Values{"Digits": {"2"}})
	for range 2 { // Twilio may deliver it twice
		if status, _, err := h.twilio.Post(ctx, publicBase+ivr.PathStatus, decided.Params(url.Values{"CallStatus": {"completed"}})); err != nil || status != http.StatusNoContent {
			t.Fatalf("status: %d %v", status, err)
		}
	}
	if rec := h.record(decided.SID); rec.Decision != consent.Declined || h.records(decided.SID) != 1 {
		t.Errorf("status after a decision changed it: %+v (%d records)", rec, h.records(decided.SID))
	}

	ringing := h.call("CAringing")
	if status, _, _ := h.twilio.Post(ctx, publicBase+ivr.PathStatus, ringing.Params(url.Values{"CallStatus": {"ringing"}})); status != http.StatusNoContent || h.records(ringing.SID) != 0 {
		t.Errorf("a ringing status recorded something (status %d)", status)
	}
}

// Twilio retries, partial and final results racing, duplicates: 50
// goroutines deliver the same call's results at once; one record.
func TestConcurrentDeliveriesRecordOnce(t *testing.T) {
	h := newHarness(t, t.TempDir())
	c := h.call("CAconcurrent")
	g := h.start(c)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			switch i % 3 {
			case 0:
				var status int
				status, _, err = h.twilio.Post(context.Background(), g.Attr("partialResultCallback"),
					c.Params(url.Values{"UnstableSpeechResult": {"yes I agree"}, "Stability": {"0.95"}}))
				if err == nil && status != http.StatusNoContent {
					err = fmt.Errorf("partial status %d", status)
				}
			case 1:
				_, err = c.TwiML(context.Background(), g.Attr("action"), c.Params(url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.9"}}))
			default:
				_, err = c.TwiML(context.Background(), g.Attr("action"), c.Params(url.Values{"Digits": {"1"}}))
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := h.records(c.SID); n != 1 {
		t.Fatalf("%d records, want exactly 1", n)
	}
}

func TestRecordsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	first := newHarness(t, dir)
	c := first.call("CArestart")
	first.answer(c, first.start(c), url.Values{"Digits": {"1"}})
	want := first.record(c.SID)
	refBefore := want.PatientRef
	first.close()

	second := newHarness(t, dir)
	got := second.record(c.SID)
	if got.ID != want.ID || got.Decision != consent.Granted {
		t.Fatalf("after restart: %+v, want %+v", got, want)
	}
	// The pseudonym key is stored, so patient_ref is stable across restarts.
	c2 := second.call("CArestart2")
	second.answer(c2, second.start(c2), url.Values{"Digits": {"2"}})
	if ref := second.record(c2.SID).PatientRef; ref != refBefore {
		t.Errorf("patient_ref changed across restart: %q then %q", refBefore, ref)
	}
}

func TestHealthAndReady(t *testing.T) {
	h := newHarness(t, t.TempDir())
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := h.srv.Client().Get(h.srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s = %d", path, resp.StatusCode)
		}
	}
	_ = h.store.Close()
	resp, err := h.srv.Client().Get(h.srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz with the store closed = %d, want 503", resp.StatusCode)
	}
}

// A failing dependency never reaches the caller as an error: the webhook
// answers a hold line and a redirect back into the flow, and records nothing.
func TestDependencyFailureHolds(t *testing.T) {
	h := newHarness(t, t.TempDir())
	c := h.call("CAhold")
	g := h.start(c)
	_ = h.store.Close()
	resp := h.answer(c, g, url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.9"}})
	redirect, ok := resp.Find("Redirect")
	if !ok || resp.HangsUp() || !strings.HasPrefix(redirect.Text, publicBase+ivr.PathResume+"?") {
		t.Fatalf("want hold TwiML redirecting to %s:\n%s", ivr.PathResume, resp.Raw)
	}
	if _, ok := resp.Find("Pause"); !ok {
		t.Errorf("hold TwiML has no pause:\n%s", resp.Raw)
	}
	// Twilio follows the redirect: the question is asked again.
	resp, err := c.TwiML(context.Background(), redirect.Text, c.Params(nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := resp.SpeechGather(); !ok {
		t.Fatalf("resume does not ask again:\n%s", resp.Raw)
	}
}

// A caller who chose Spanish and hung up without answering: the
// no_response from the status callback names the es-US script they heard,
// not the default.
func TestNoResponseNamesChosenLanguage(t *testing.T) {
	h := newHarness(t, t.TempDir())
	ctx := context.Background()
	c := h.call("CAhungupspanish")
	resp, err := c.Start(ctx, ivr.PathIncoming)
	if err != nil {
		t.Fatal(err)
	}
	lang, ok := resp.Find("Gather")
	if !ok {
		t.Fatalf("no language Gather:\n%s", resp.Raw)
	}
	es, _ := h.lib.ByLanguage("es-US")
	if _, err := c.TwiML(ctx, lang.Attr("action"), c.Params(url.Values{"Digits": {es.LanguageKey}})); err != nil {
		t.Fatal(err)
	}
	// The choice is remembered after the answer: wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		sc, err := h.store.StartedCall(ctx, c.SID)
		if err == nil && sc.Script.Language == "es-US" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("language choice not remembered: %+v, %v", sc, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	status, _, err := h.twilio.Post(ctx, publicBase+ivr.PathStatus, c.Params(url.Values{"CallStatus": {"completed"}}))
	if err != nil || status != http.StatusNoContent {
		t.Fatalf("status: %d %v", status, err)
	}
	rec, err := h.store.Get(ctx, c.SID, es.ID)
	if err != nil || rec.Decision != consent.NoResponse || rec.Script != es.Ref() {
		t.Fatalf("record %+v, %v; want no_response on the es-US script %+v", rec, err, es.Ref())
	}
}
