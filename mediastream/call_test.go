package mediastream_test

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/audiofixtures"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/mediastream"
	"github.com/consentline/consentline/twiml"
)

const (
	streamURL     = "wss://consent.example.com/voice/stream"
	testAuthToken = "0123456789abcdef0123456789abcdef"
)

// callRig is a mediastream.Server following calls for a consent.Service on
// the embedded database, and a simulated Twilio to stream to it.
type callRig struct {
	store  *sqlitestore.Store
	svc    *consent.Service
	lib    *twiml.Library
	calls  *mediastream.Calls
	server *mediastream.Server
	twilio *twiliosim.Twilio
}

func newCallRig(t testing.TB, configure func(*mediastream.Calls)) *callRig {
	t.Helper()
	ctx := context.Background()
	store, err := sqlitestore.Open(ctx, t.TempDir(), sqlitestore.Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := pii.NewKeyring([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	refs, err := pii.LoadPseudonymizer(ctx, store, keys)
	if err != nil {
		t.Fatal(err)
	}
	r := &callRig{store: store, lib: twiml.Builtin()}
	r.svc = consent.NewService(consent.Config{Store: store, Locker: memlock.New(), Seal: keys.SealFor, Open: keys.OpenFor, PatientRef: refs.Ref})
	r.calls = &mediastream.Calls{Consent: r.svc, Scripts: r.lib}
	if configure != nil {
		configure(r.calls)
	}
	r.server, err = mediastream.NewServer(mediastream.Config{PublicURL: streamURL, AuthToken: testAuthToken, AccountSID: testAccount, Open: r.calls.Open})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(r.server)
	r.twilio = &twiliosim.Twilio{PublicBaseURL: "https://consent.example.com", Target: hs.URL, AuthToken: testAuthToken, AccountSID: testAccount}
	t.Cleanup(func() {
		_ = r.server.Close()
		hs.Close()
		_ = store.Close()
	})
	return r
}

func (r *callRig) play(t *testing.T, callSID string, c audiofixtures.Call, realtime bool) {
	t.Helper()
	script := r.lib.Default()
	res, err := r.twilio.Stream(context.Background(), streamURL, twiliosim.StreamPlay{
		CallSID:          callSID,
		CustomParameters: map[string]string{mediastream.ParamScript: script.ID, mediastream.ParamLanguage: script.Language},
		Inbound:          c.Inbound, Outbound: c.Outbound, Realtime: realtime,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.CloseCode != 1000 {
		t.Fatalf("stream closed with %d %q", res.CloseCode, res.CloseText)
	}
}

// measurement waits for the stream's saved measurement of callSID.
func (r *callRig) measurement(t *testing.T, callSID string, done func(consent.StreamMeasurement) bool) consent.StreamMeasurement {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := r.store.StreamMeasurement(context.Background(), callSID, r.lib.Default().ID)
		if err == nil && done(m) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("no finished measurement of %s: %+v, %v", callSID, m, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Every two-track fixture call, streamed through a real websocket as Twilio
// does: the measured onsets, the barge-in and the answer's audio are what
// calls.tsv says, echo and background talk are never the caller.
func TestFixtureCallsMeasured(t *testing.T) {
	r := newCallRig(t, nil)
	calls, err := audiofixtures.Calls()
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range calls {
		t.Run(c.Name, func(t *testing.T) {
			callSID := sid("CA", 1000+i)
			r.play(t, callSID, c, false)
			m := r.measurement(t, callSID, func(m consent.StreamMeasurement) bool { return m.PromptOnsetMS >= 0 })
			if d := m.PromptOnsetMS - c.DisclosureOnsetMS; d < -20 || d > 60 {
				t.Errorf("disclosure onset %d ms, true %d", m.PromptOnsetMS, c.DisclosureOnsetMS)
			}
			if c.CallerOnsetMS < 0 {
				if m.AnswerOnsetMS >= 0 || m.AnswerAudio != "" {
					t.Fatalf("an answer at %d ms in a call where the caller never speaks", m.AnswerOnsetMS)
				}
				return
			}
			m = r.measurement(t, callSID, func(m consent.StreamMeasurement) bool { return m.AnswerAudio != "" })
			if d := m.AnswerOnsetMS - c.CallerOnsetMS; d < -40 || d > 120 {
				t.Errorf("answer onset %d ms, true %d (error %+d ms)", m.AnswerOnsetMS, c.CallerOnsetMS, d)
			}
			if m.BargeIn != c.BargeIn {
				t.Errorf("barge_in %v, calls.tsv says %v", m.BargeIn, c.BargeIn)
			}
			ev, err := r.svc.Evidence(context.Background(), callSID)
			if err != nil || len(ev) != 1 {
				t.Fatalf("evidence: %d, %v", len(ev), err)
			}
			wantMS := m.AnswerEndMS + 300 - max(m.AnswerOnsetMS-300, 0)
			if got := int64(len(ev[0].Audio)) / 8; got < wantMS-40 || got > wantMS+40 {
				t.Errorf("answer audio %d ms, want onset−300 to end+300 = %d ms", got, wantMS)
			}
			t.Logf("%s: disclosure %d ms, answer %d–%d ms (true onset %d), barge_in %v, audio %d ms",
				c.Name, m.PromptOnsetMS, m.AnswerOnsetMS, m.AnswerEndMS, c.CallerOnsetMS, m.BargeIn, len(ev[0].Audio)/8)
		})
	}
}

// Every single-track clip as a caller's line with nothing playing: speech
// gives an answer at its true onset, a cough, a click or a key tone none.
func TestFixtureClipsMeasured(t *testing.T) {
	r := newCallRig(t, nil)
	clips, err := audiofixtures.Clips()
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range clips {
		t.Run(c.File, func(t *testing.T) {
			callSID := sid("CA", 2000+i)
			// The disclosure played before: a short burst of prompt-free
			// silence on the outbound track is what Twilio sends then.
			call := audiofixtures.Call{Inbound: c.Audio, Outbound: make([]byte, len(c.Audio))}
			for j := range call.Outbound {
				call.Outbound[j] = 0xFF
			}
			r.play(t, callSID, call, false)
			if !c.IsSpeech() {
				// The stream ends with nothing to save but an empty
				// measurement; none may hold an answer.
				time.Sleep(50 * time.Millisecond)
				if m, err := r.store.StreamMeasurement(context.Background(), callSID, r.lib.Default().ID); err == nil && m.AnswerOnsetMS >= 0 {
					t.Fatalf("%s taken for the caller speaking at %d ms", c.Text, m.AnswerOnsetMS)
				}
				return
			}
			m := r.measurement(t, callSID, func(m consent.StreamMeasurement) bool { return m.AnswerAudio != "" })
			if d := m.AnswerOnsetMS - c.OnsetMS; d < -40 || d > 120 {
				t.Errorf("onset %d ms, true %d", m.AnswerOnsetMS, c.OnsetMS)
			}
		})
	}
}

// Twilio's side vanishing mid-frame (no stop, no close frame) ends the call's
// stream like a stop: what was measured is saved, the answer's audio so far
// kept, and nothing of the stream is left running (goleak, TestMain).
func TestStreamDroppedMidFrame(t *testing.T) {
	r := newCallRig(t, nil)
	calls, err := audiofixtures.Calls()
	if err != nil {
		t.Fatal(err)
	}
	c := calls[0] // dev_bargein: the answer begins at 4200 ms
	callSID := sid("CA", 4001)
	script := r.lib.Default()
	// The player's own error (if any) is about the connection it cut.
	_, _ = r.twilio.Stream(context.Background(), streamURL, twiliosim.StreamPlay{
		CallSID:          callSID,
		CustomParameters: map[string]string{mediastream.ParamScript: script.ID, mediastream.ParamLanguage: script.Language},
		Inbound:          c.Inbound, Outbound: c.Outbound,
		AbortAfter: 4800 / 20, // mid-answer
	})
	m := r.measurement(t, callSID, func(m consent.StreamMeasurement) bool { return m.AnswerAudio != "" })
	if m.AnswerOnsetMS < 4160 || m.AnswerOnsetMS > 4320 || m.AnswerEndMS != -1 {
		t.Fatalf("measurement after the drop: answer %d–%d ms", m.AnswerOnsetMS, m.AnswerEndMS)
	}
}
