package mediastream_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/audiofixtures"
	"github.com/consentline/consentline/mediastream"
	"github.com/consentline/consentline/mediastream/deepgram"
	"github.com/consentline/consentline/mediastream/deepgram/deepgramtest"
)

func fixtureCall(t *testing.T, name string) audiofixtures.Call {
	t.Helper()
	c, err := audiofixtures.CallNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fastConfig is a Deepgram client for a stream played faster than real
// time: its send queue holds a whole fixture call, where in production it
// holds one second and a recognizer falling behind fails the session.
func fastConfig(url, key string) deepgram.Config {
	return deepgram.Config{APIKey: key, URL: url, SendQueue: 1 << 12}
}

// mover records the calls moved to their read-back.
type mover struct {
	mu    sync.Mutex
	moved []string
	err   error
}

// recognizerRig is a call rig whose Calls recognize through a Deepgram
// stand-in (accepting "dg-key") that plays steps, connecting with key, and
// move decided calls with mv (nil: none); and the stand-in.
func recognizerRig(t *testing.T, key string, mv *mover, steps ...deepgramtest.Step) (*callRig, *deepgramtest.Server) {
	t.Helper()
	dg := deepgramtest.NewServer(deepgramtest.Config{APIKey: "dg-key", Script: steps})
	t.Cleanup(dg.Close)
	return newCallRig(t, func(c *mediastream.Calls) {
		c.Recognizer = deepgram.Recognizer{Config: fastConfig(dg.URL, key)}
		if mv != nil {
			c.MoveToReadBack = mv.move
		}
	}), dg
}

func (m *mover) move(ctx context.Context, callSID string, script consent.ScriptRef) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.moved = append(m.moved, callSID+" "+script.Language)
	return m.err
}

func (m *mover) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.moved)
}

func (r *callRig) started(t *testing.T, callSID string) {
	t.Helper()
	err := r.svc.CallStarted(context.Background(), consent.Call{CallSID: callSID, Script: r.lib.Default().Ref(), From: "+14155550123", To: "+18005550199"})
	if err != nil {
		t.Fatal(err)
	}
}

func (r *callRig) waitRecord(t *testing.T, callSID string) consent.Record {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, ok, err := r.svc.Decision(context.Background(), callSID, r.lib.Default().ID)
		if err == nil && ok {
			return rec
		}
		if time.Now().After(deadline) {
			t.Fatalf("no record of %s: %v", callSID, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The recognizer's final result decides on the stream, through the same
// threshold, lock and exactly-once record, with the measured timings; the
// live call is moved to the read-back; a Gather result arriving afterwards
// records nothing.
func TestStreamRecognizerDecides(t *testing.T) {
	mv := &mover{}
	r, dg := recognizerRig(t, "dg-key", mv,
		deepgramtest.SpeechStartedAt(2650),
		deepgramtest.InterimAt(3000, "no", 0.6), // an interim never decides,
		deepgramtest.FinalAt(4300, "no, I do not agree", 0.92, true),
	)
	callSID := sid("CA", 3001)
	r.started(t, callSID)
	r.play(t, callSID, fixtureCall(t, "dev_decline_bg"), false)

	rec := r.waitRecord(t, callSID)
	if rec.Decision != consent.Declined || rec.Source != consent.SourceMediaStream || rec.Timing != consent.TimingMeasured || !rec.BargeIn {
		t.Fatalf("record %+v", rec)
	}
	if rec.DisclosureHeardMS < 2300-40 || rec.DisclosureHeardMS > 2300+120 {
		t.Errorf("disclosure_heard_ms %d, want about 2300 (answer at 2600, disclosure at 300)", rec.DisclosureHeardMS)
	}
	if rec.MustHearComplete {
		t.Error("must_hear_complete true for an answer given over the must-hear part (no must-hear end known)")
	}
	if mv.count() != 1 {
		t.Fatalf("moved %d times", mv.count())
	}
	if q := dg.Last().Query; q.Get("mip_opt_out") != "true" || q.Get("encoding") != "mulaw" || q.Get("language") != "en-US" {
		t.Errorf("Deepgram query %v", q)
	}
	conf := 0.95
	out, err := r.svc.Decide(context.Background(), consent.Answer{Call: consent.Call{CallSID: callSID, Script: r.lib.Default().Ref()},
		Source: consent.SourceSpeech, Transcript: "yes I agree", Confidence: &conf, Heard: consent.Heard{Timing: consent.TimingEstimated}})
	if err != nil || out.Created || out.Record.Decision != consent.Declined {
		t.Fatalf("late Gather result: %+v, %v", out, err)
	}
}

// Words the recognizer hears where the VAD heard no caller (echo of the
// disclosure) decide nothing.
func TestStreamRecognizerEchoDecidesNothing(t *testing.T) {
	mv := &mover{}
	r, _ := recognizerRig(t, "dg-key", mv, deepgramtest.FinalAt(3000, "yes", 0.95, true))
	callSID := sid("CA", 3002)
	r.started(t, callSID)
	r.play(t, callSID, fixtureCall(t, "dev_loud_echo"), false)
	time.Sleep(200 * time.Millisecond)
	if _, ok, _ := r.svc.Decision(context.Background(), callSID, r.lib.Default().ID); ok || mv.count() != 0 {
		t.Fatal("a decision from the disclosure's echo")
	}
}

// Faults: the recognizer drops mid-call, or the REST update fails. The
// stream still measures and keeps evidence; the Gather decides (or reads
// the decision back).
func TestStreamRecognizerFaults(t *testing.T) {
	t.Run("recognizer drops", func(t *testing.T) {
		r, _ := recognizerRig(t, "dg-key", nil, deepgramtest.DropAt(1000))
		callSID := sid("CA", 3003)
		r.started(t, callSID)
		r.play(t, callSID, fixtureCall(t, "dev_bargein"), false)
		m := r.measurement(t, callSID, func(m consent.StreamMeasurement) bool { return m.AnswerAudio != "" })
		if m.AnswerOnsetMS < 4160 || m.AnswerOnsetMS > 4320 {
			t.Errorf("answer onset %d after the recognizer dropped", m.AnswerOnsetMS)
		}
		if _, ok, _ := r.svc.Decision(context.Background(), callSID, r.lib.Default().ID); ok {
			t.Error("decided without a recognizer")
		}
	})
	t.Run("recognizer refuses the key", func(t *testing.T) {
		r, _ := recognizerRig(t, "wrong", nil)
		callSID := sid("CA", 3004)
		r.play(t, callSID, fixtureCall(t, "dev_after"), false)
		r.measurement(t, callSID, func(m consent.StreamMeasurement) bool { return m.AnswerAudio != "" })
	})
	t.Run("recognizer drops mid-utterance", func(t *testing.T) {
		// "yes" is final for its span, but the utterance never completes
		// (no speech_final, no UtteranceEnd): it is a prefix, not an answer.
		mv := &mover{}
		r, _ := recognizerRig(t, "dg-key", mv,
			deepgramtest.FinalAt(4600, "yes", 0.95, false),
			deepgramtest.DropAt(4700),
		)
		callSID := sid("CA", 3007)
		r.started(t, callSID)
		r.play(t, callSID, fixtureCall(t, "dev_bargein"), false)
		r.measurement(t, callSID, func(m consent.StreamMeasurement) bool { return m.AnswerAudio != "" })
		if _, ok, _ := r.svc.Decision(context.Background(), callSID, r.lib.Default().ID); ok || mv.count() != 0 {
			t.Fatal("an incomplete utterance decided")
		}
	})
	t.Run("REST update fails", func(t *testing.T) {
		mv := &mover{err: errors.New("twilio: 503")}
		r, _ := recognizerRig(t, "dg-key", mv, deepgramtest.FinalAt(5600, "yes I agree", 0.9, true))
		callSID := sid("CA", 3005)
		r.started(t, callSID)
		r.play(t, callSID, fixtureCall(t, "dev_bargein"), false)
		if rec := r.waitRecord(t, callSID); rec.Decision != consent.Granted || mv.count() != 1 {
			t.Fatalf("record %+v, moved %d", rec, mv.count())
		}
	})
}

// The stream can run ahead of the incoming webhook's work on another
// instance (the call's start not stored yet when the recognizer hears the
// answer): the stream then decides nothing, its measurement is still
// saved, and the Gather's decision takes it.
func TestStreamBeforeTheCallIsStored(t *testing.T) {
	mv := &mover{}
	r, _ := recognizerRig(t, "dg-key", mv, deepgramtest.FinalAt(5600, "yes I agree", 0.9, true))
	callSID := sid("CA", 3006)
	fx := fixtureCall(t, "dev_bargein")
	r.play(t, callSID, fx, false)
	r.measurement(t, callSID, func(m consent.StreamMeasurement) bool { return m.AnswerAudio != "" })
	if _, ok, _ := r.svc.Decision(context.Background(), callSID, r.lib.Default().ID); ok || mv.count() != 0 {
		t.Fatal("the stream decided for a call whose start is not stored")
	}
	r.started(t, callSID) // the incoming webhook's work lands
	heard, ok, err := r.svc.MeasuredHeard(context.Background(), callSID, r.lib.Default().ID, true)
	if err != nil || !ok || heard.Timing != consent.TimingMeasured || !heard.BargeIn || !near(heard.MS, fx.CallerOnsetMS-fx.DisclosureOnsetMS, 100) {
		t.Fatalf("the Gather's decision would take %+v, %v, %v", heard, ok, err)
	}
}

func near(got, want, tol int64) bool { return got >= want-tol && got <= want+tol }
