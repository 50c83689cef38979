package ivr_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/mediastream"
)

func withStreams(cfg *ivr.Config) { cfg.MediaStreams = true }

// startStreamed posts the incoming webhook of a call with media streams on
// and checks the stream and the must-hear redirect; it returns the
// redirect's URL.
func startStreamed(t *testing.T, h *harness, c *twiliosim.Call) string {
	t.Helper()
	// Posted directly: Call.Start would follow the redirect.
	resp, err := c.TwiML(context.Background(), publicBase+ivr.PathIncoming, c.Params(url.Values{"CallStatus": {"ringing"}}))
	if err != nil {
		t.Fatal(err)
	}
	stream, ok := resp.Find("Stream")
	if !ok {
		t.Fatalf("no <Stream> in\n%s", resp.Raw)
	}
	if got, want := stream.Attr("url"), "wss://consent.example.com/voice/stream"; got != want {
		t.Errorf("stream url %q, want %q", got, want)
	}
	if stream.Attr("track") != "both_tracks" || stream.Attr("statusCallback") != publicBase+ivr.PathStreamStatus {
		t.Errorf("stream attrs %v", stream.Attrs)
	}
	params := map[string]string{}
	for _, p := range stream.Children {
		params[p.Attr("name")] = p.Attr("value")
	}
	if params[mediastream.ParamScript] != h.lib.Default().ID || params[mediastream.ParamLanguage] != h.lib.Default().Language {
		t.Errorf("stream parameters %v", params)
	}
	if _, ok := resp.SpeechGather(); ok {
		t.Error("the answer <Gather> comes after the must-hear redirect, not in the first document")
	}
	red, ok := resp.Find("Redirect")
	if !ok || !strings.HasPrefix(red.Text, publicBase+ivr.PathHeard+"?") {
		t.Fatalf("no must-hear redirect in\n%s", resp.Raw)
	}
	return red.Text
}

// The redirect after the must-hear part marks its end and answers with the
// answer <Gather>; a Gather answer then takes the stream's measurement,
// labelled measured.
func TestStreamMeasurementDecides(t *testing.T) {
	h := newHarness(t, t.TempDir(), withStreams)
	c := h.call("streamed")
	redirect := startStreamed(t, h, c)
	ctx := context.Background()
	streamStart := h.clock.Now()

	// The stream (on this or another instance) measured the disclosure's
	// start and the caller's answer, which began 4.2 s into the stream,
	// while the disclosure still played.
	h.clock.advance(3 * time.Second)
	after, err := c.TwiML(ctx, redirect, c.Params(nil))
	if err != nil {
		t.Fatal(err)
	}
	g, ok := after.SpeechGather()
	if !ok {
		t.Fatalf("must-hear redirect answered without the answer Gather:\n%s", after.Raw)
	}
	m := consent.StreamMeasurement{CallSID: c.SID, ScriptID: h.lib.Default().ID, StreamSID: "MZ" + c.SID[2:], StartedAt: streamStart,
		PromptOnsetMS: 300, PromptEndMS: -1, AnswerOnsetMS: 4200, AnswerEndMS: 5100, BargeIn: true}
	if err := h.svc.SaveStreamMeasurement(ctx, m, []byte(strings.Repeat("\xff", 1600))); err != nil {
		t.Fatal(err)
	}
	// The must-hear end is stored after the answer, in the background.
	waitFor(t, func() bool {
		got, err := h.store.StreamMeasurement(ctx, c.SID, m.ScriptID)
		return err == nil && !got.MustHearEndedAt.IsZero()
	})

	h.answer(c, g, url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.93"}})
	rec := h.record(c.SID)
	want := consent.Heard{MS: 3900, BargeIn: true, MustHearComplete: true, Timing: consent.TimingMeasured}
	if got := (consent.Heard{MS: rec.DisclosureHeardMS, BargeIn: rec.BargeIn, MustHearComplete: rec.MustHearComplete, Timing: rec.Timing}); got != want {
		t.Fatalf("record timings %+v, want %+v", got, want)
	}
	ev, err := h.svc.Evidence(ctx, c.SID)
	if err != nil || len(ev) != 1 || len(ev[0].Audio) != 1600 {
		t.Fatalf("evidence: %d, %v", len(ev), err)
	}
}

// A streamed call whose stream measured nothing keeps the estimate, labelled
// estimated.
func TestStreamWithoutMeasurementStaysEstimated(t *testing.T) {
	h := newHarness(t, t.TempDir(), withStreams)
	c := h.call("stream-lost")
	redirect := startStreamed(t, h, c)
	after, err := c.TwiML(context.Background(), redirect, c.Params(nil))
	if err != nil {
		t.Fatal(err)
	}
	g, _ := after.SpeechGather()
	h.answer(c, g, url.Values{"Digits": {"1"}})
	if rec := h.record(c.SID); rec.Timing != consent.TimingEstimated {
		t.Fatalf("timing %q, want estimated", rec.Timing)
	}
}

func TestStreamStatusCallback(t *testing.T) {
	h := newHarness(t, t.TempDir(), withStreams)
	c := h.call("stream-status")
	ctx := context.Background()
	sid := "MZ" + c.SID[2:]
	for _, tc := range []struct {
		params url.Values
		want   int
	}{
		{url.Values{"StreamSid": {sid}, "StreamName": {"consent-en-US"}, "StreamEvent": {"stream-started"}}, http.StatusNoContent},
		{url.Values{"StreamSid": {sid}, "StreamName": {"consent-en-US"}, "StreamEvent": {"stream-error"}, "StreamError": {"connection refused"}}, http.StatusNoContent},
		{url.Values{"StreamSid": {"MZnot-a-sid"}, "StreamEvent": {"stream-started"}}, http.StatusBadRequest},
		{url.Values{"StreamSid": {sid}, "StreamEvent": {"stream-exploded"}}, http.StatusBadRequest},
	} {
		status, _, err := h.twilio.Post(ctx, publicBase+ivr.PathStreamStatus, c.Params(tc.params))
		if err != nil || status != tc.want {
			t.Errorf("%v: status %d, %v; want %d", tc.params, status, err, tc.want)
		}
	}
	if !strings.Contains(h.logs.String(), "media stream failed") {
		t.Error("a stream error is not logged")
	}
}

// When the stream decides first, the call is moved with Twilio's REST API to
// the read-back of the recorded decision.
func TestMoveToReadBack(t *testing.T) {
	var mu sync.Mutex
	var moved []string
	h := newHarness(t, t.TempDir(), withStreams, func(cfg *ivr.Config) {
		cfg.UpdateCallURL = func(ctx context.Context, callSID, u string) error {
			mu.Lock()
			defer mu.Unlock()
			moved = append(moved, callSID+" "+u)
			return nil
		}
	})
	c := h.call("stream-decided")
	startStreamed(t, h, c)
	ctx := context.Background()
	script := h.lib.Default()
	conf := 0.91
	out, err := h.svc.Decide(ctx, consent.Answer{Call: consent.Call{CallSID: c.SID, Script: script.Ref(), From: c.From, To: c.To},
		Source: consent.SourceMediaStream, Transcript: "no I do not agree", Confidence: &conf,
		Heard: consent.Heard{MS: 2300, BargeIn: true, Timing: consent.TimingMeasured}})
	if err != nil || !out.Created {
		t.Fatalf("stream decision: %+v, %v", out, err)
	}
	if err := h.ivr.MoveToReadBack(ctx, c.SID, script.Ref()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(moved) != 1 || !strings.HasPrefix(moved[0], c.SID+" "+publicBase+ivr.PathDecided+"?") {
		t.Fatalf("moved %v", moved)
	}
	u := strings.TrimPrefix(moved[0], c.SID+" ")
	mu.Unlock()
	resp, err := c.TwiML(ctx, u, c.Params(nil))
	if err != nil {
		t.Fatal(err)
	}
	if said := resp.Spoken(); len(said) == 0 || said[0].Text != script.ReadBack[consent.Declined] || !resp.HangsUp() {
		t.Fatalf("decided answered %s", resp.Raw)
	}
	// The Gather's own callback, arriving afterwards, reads the same
	// decision back and records nothing.
	g := h.startGatherAfterRedirect(c)
	resp = h.answer(c, g, url.Values{"SpeechResult": {"yes"}, "Confidence": {"0.9"}})
	if said := resp.Spoken(); len(said) == 0 || said[0].Text != script.ReadBack[consent.Declined] {
		t.Fatalf("late Gather answered %s", resp.Raw)
	}
	if n := h.records(c.SID); n != 1 {
		t.Fatalf("%d records", n)
	}
}

// startGatherAfterRedirect starts a streamed call as Twilio plays it,
// following the must-hear redirect to the answer Gather.
func (h *harness) startGatherAfterRedirect(c *twiliosim.Call) twiliosim.Verb {
	h.t.Helper()
	resp, err := c.Start(context.Background(), ivr.PathIncoming)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, ok := resp.Find("Stream"); !ok {
		h.t.Fatalf("no stream:\n%s", resp.Raw)
	}
	g, ok := resp.SpeechGather()
	if !ok {
		h.t.Fatalf("no Gather after the redirect:\n%s", resp.Raw)
	}
	return g
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A streamed call that hangs up without answering is recorded no_response
// with what its stream measured: how much of the disclosure played.
func TestHangUpMeasured(t *testing.T) {
	h := newHarness(t, t.TempDir(), withStreams)
	c := h.call("stream-hangup")
	startStreamed(t, h, c)
	ctx := context.Background()
	m := consent.StreamMeasurement{CallSID: c.SID, ScriptID: h.lib.Default().ID, StreamSID: "MZ" + c.SID[2:], StartedAt: h.clock.Now(),
		PromptOnsetMS: 300, PromptEndMS: 2900, AnswerOnsetMS: -1, AnswerEndMS: -1}
	if err := h.svc.SaveStreamMeasurement(ctx, m, nil); err != nil {
		t.Fatal(err)
	}
	status, _, err := h.twilio.Post(ctx, publicBase+ivr.PathStatus, c.Params(url.Values{"CallStatus": {"completed"}, "CallDuration": {"5"}}))
	if err != nil || status != http.StatusNoContent {
		t.Fatalf("status callback: %d, %v", status, err)
	}
	rec := h.record(c.SID)
	if rec.Decision != consent.NoResponse || rec.Timing != consent.TimingMeasured || rec.DisclosureHeardMS != 2600 || rec.MustHearComplete || rec.BargeIn {
		t.Fatalf("record %+v", rec)
	}
}

// An answer to a re-prompt keeps the estimate, labelled so, even with a
// stream measurement: the stream's outbound speech runs on into the
// re-prompt, so "how much of the disclosure played" is not measured there.
func TestRepromptAnswerStaysEstimated(t *testing.T) {
	h := newHarness(t, t.TempDir(), withStreams)
	c := h.call("stream-reprompt")
	g := h.startGatherAfterRedirect(c)
	ctx := context.Background()
	m := consent.StreamMeasurement{CallSID: c.SID, ScriptID: h.lib.Default().ID, StreamSID: "MZ" + c.SID[2:], StartedAt: h.clock.Now(),
		PromptOnsetMS: 300, PromptEndMS: 21000, AnswerOnsetMS: 20500, AnswerEndMS: 21500, BargeIn: true}
	if err := h.svc.SaveStreamMeasurement(ctx, m, nil); err != nil {
		t.Fatal(err)
	}
	resp := h.answer(c, g, url.Values{"SpeechResult": {"purple wombat"}, "Confidence": {"0.9"}})
	g2, ok := resp.SpeechGather()
	if !ok {
		t.Fatalf("no re-prompt:\n%s", resp.Raw)
	}
	h.answer(c, g2, url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.9"}})
	if rec := h.record(c.SID); rec.Decision != consent.Granted || rec.Timing != consent.TimingEstimated || rec.BargeIn {
		t.Fatalf("re-prompt answer recorded %s, timing %s, barge_in %v; want granted, estimated, false", rec.Decision, rec.Timing, rec.BargeIn)
	}
}
