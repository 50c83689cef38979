package integration

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/audiofixtures"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/mediastream"
	"github.com/consentline/consentline/mediastream/deepgram"
	"github.com/consentline/consentline/mediastream/deepgram/deepgramtest"
	"github.com/consentline/consentline/relay"
	"github.com/consentline/consentline/relay/relaysqlite"
	"github.com/consentline/consentline/twiml"
)

// mountStreams serves media streams on app's router, as serve's
// mountStreams does.
func mountStreams(t testing.TB, app *ivr.Server, cfg ivr.Config, lib *twiml.Library, rec mediastream.Recognizer, log *slog.Logger) *mediastream.Server {
	t.Helper()
	calls := &mediastream.Calls{Consent: cfg.Consent, Scripts: lib, Recognizer: rec, MoveToReadBack: app.MoveToReadBack, Logger: log}
	streams, err := mediastream.NewServer(mediastream.Config{PublicURL: ivr.StreamURL(publicBase), AuthToken: authToken, AccountSID: accountSID, Logger: log, Open: calls.Open})
	if err != nil {
		t.Fatal(err)
	}
	app.Router().Handle(ivr.PathStream, streams)
	return streams
}

func fixtureCall(t *testing.T, name string) audiofixtures.Call {
	t.Helper()
	c, err := audiofixtures.CallNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// streamedCall is one call whose webhooks go to one instance and whose media
// stream goes to another, as Twilio's load balancer may send them.
type streamedCall struct {
	t        *testing.T
	call     *twiliosim.Call // its webhooks
	streamTo *twiliosim.Twilio
	lib      *twiml.Library
	gather   twiliosim.Verb
	heardURL string
	done     chan error
}

// start answers the call (incoming) and starts its stream at real-time pace
// with the fixture's two tracks, stopping after stopAfter.
func startStreamedCall(t *testing.T, webhooks, stream *twiliosim.Twilio, lib *twiml.Library, sid string, fx audiofixtures.Call, stopAfter time.Duration) *streamedCall {
	t.Helper()
	ctx := context.Background()
	sc := &streamedCall{t: t, call: &twiliosim.Call{Twilio: webhooks, SID: sid, From: "+14155550123", To: "+18005550199"}, streamTo: stream, lib: lib, done: make(chan error, 1)}
	resp, err := sc.call.TwiML(ctx, publicBase+ivr.PathIncoming, sc.call.Params(url.Values{"CallStatus": {"ringing"}}))
	if err != nil {
		t.Fatal(err)
	}
	st, ok := resp.Find("Stream")
	red, ok2 := resp.Find("Redirect")
	if !ok || !ok2 {
		t.Fatalf("no stream or must-hear redirect:\n%s", resp.Raw)
	}
	sc.heardURL = red.Text
	params := map[string]string{}
	for _, p := range st.Children {
		params[p.Attr("name")] = p.Attr("value")
	}
	go func() {
		_, err := stream.Stream(ctx, st.Attr("url"), twiliosim.StreamPlay{
			CallSID: sid, CustomParameters: params, Inbound: fx.Inbound, Outbound: fx.Outbound,
			Realtime: true, StopAfter: int(stopAfter / (20 * time.Millisecond)),
		})
		sc.done <- err
	}()
	return sc
}

// mustHearEnds posts the must-hear redirect at the stream's time at (as
// Twilio does when the must-hear <Say>s have played) and keeps the answer
// Gather.
func (sc *streamedCall) mustHearEnds(started time.Time, at time.Duration) {
	sc.t.Helper()
	time.Sleep(time.Until(started.Add(at)))
	resp, err := sc.call.TwiML(context.Background(), sc.heardURL, sc.call.Params(nil))
	if err != nil {
		sc.t.Fatal(err)
	}
	g, ok := resp.SpeechGather()
	if !ok {
		sc.t.Fatalf("must-hear redirect answered without the Gather:\n%s", resp.Raw)
	}
	sc.gather = g
}

func (sc *streamedCall) streamEnded() {
	sc.t.Helper()
	if err := <-sc.done; err != nil {
		sc.t.Fatal(err)
	}
}

// answer posts the Gather's final result and returns what was read back.
func (sc *streamedCall) answer(params url.Values) *twiliosim.Response {
	sc.t.Helper()
	resp, err := sc.call.TwiML(context.Background(), sc.gather.Attr("action"), sc.call.Params(params))
	if err != nil {
		sc.t.Fatal(err)
	}
	return resp
}

func near(got, want, tol int64) bool { return got >= want-tol && got <= want+tol }

// checkMeasuredRecord: the record holds the measured timings of the fixture
// call's answer and its audio is kept, sealed, for the record.
func checkMeasuredRecord(t *testing.T, svc *consent.Service, sid, scriptID string, fx audiofixtures.Call, wantSource consent.Source, wantMustHear bool) consent.Record {
	t.Helper()
	ctx := context.Background()
	rec, ok, err := svc.Decision(ctx, sid, scriptID)
	if err != nil || !ok {
		t.Fatalf("no record: %v", err)
	}
	if rec.Timing != consent.TimingMeasured || rec.Source != wantSource || rec.BargeIn != fx.BargeIn || rec.MustHearComplete != wantMustHear {
		t.Errorf("record timing %s source %s barge_in %v must_hear_complete %v; want measured, %s, %v, %v",
			rec.Timing, rec.Source, rec.BargeIn, rec.MustHearComplete, wantSource, fx.BargeIn, wantMustHear)
	}
	if want := fx.CallerOnsetMS - fx.DisclosureOnsetMS; !near(rec.DisclosureHeardMS, want+40, 80) {
		t.Errorf("disclosure_heard_ms %d, true %d", rec.DisclosureHeardMS, want)
	}
	var audio []byte
	deadline := time.Now().Add(5 * time.Second)
	for len(audio) == 0 && time.Now().Before(deadline) {
		ev, err := svc.Evidence(ctx, sid)
		if err != nil {
			t.Fatal(err)
		}
		if len(ev) == 1 {
			audio = ev[0].Audio
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(audio) < 8*800 {
		t.Errorf("answer audio %d bytes, want the answer with 300 ms either side", len(audio))
	}
	return rec
}

// The whole product on the embedded default: a call's webhooks and its media
// stream (a fixture call's two tracks at real-time pace through a real
// websocket) give one record with the measured timings, the Gather's
// decision and the answer's audio sealed beside it.
func TestStreamedCallEmbedded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	keys, err := pii.NewKeyring(testKey)
	if err != nil {
		t.Fatal(err)
	}
	outbox, err := relay.NewOutbox(relaysqlite.New(nil), keys, false)
	if err != nil {
		t.Fatal(err)
	}
	store, err := sqlitestore.Open(ctx, t.TempDir(), sqlitestore.Options{Migrate: true, Outbox: outbox})
	if err != nil {
		t.Fatal(err)
	}
	if err := relaysqlite.Migrate(ctx, store.DB()); err != nil {
		t.Fatal(err)
	}
	lib := twiml.Builtin()
	cfg, err := newApp(ctx, store, memlock.New(), store.Ping, keys, lib, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MediaStreams = true
	app := ivr.New(cfg)
	streams := mountStreams(t, app, cfg, lib, nil, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	srv := httptest.NewServer(app)
	t.Cleanup(func() {
		_ = streams.Close()
		srv.Close()
		_ = store.Close()
	})
	tw := &twiliosim.Twilio{PublicBaseURL: publicBase, Target: srv.URL, AuthToken: authToken, AccountSID: accountSID}

	fx := fixtureCall(t, "dev_bargein")
	sid := "CA" + strings.Repeat("5e", 16)
	started := time.Now()
	sc := startStreamedCall(t, tw, tw, lib, sid, fx, 6500*time.Millisecond)
	sc.mustHearEnds(started, 3000*time.Millisecond)
	sc.streamEnded()
	resp := sc.answer(url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.93"}})
	if said := resp.Spoken(); len(said) == 0 || said[0].Text != lib.Default().ReadBack[consent.Granted] {
		t.Fatalf("read back %s", resp.Raw)
	}
	checkMeasuredRecord(t, cfg.Consent, sid, lib.Default().ID, fx, consent.SourceSpeech, true)
}

// Across instances on PostgreSQL + Redis: the stream runs on one instance,
// the webhooks land on another, and the measurement reaches the decision.
func TestStreamedCallAcrossInstances(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{instances: 2, streams: true})
	fx := fixtureCall(t, "dev_bargein")
	sid := "CA" + strings.Repeat("6e", 16)
	started := time.Now()
	sc := startStreamedCall(t, c.instances[0].twilio, c.instances[1].twilio, c.lib, sid, fx, 6500*time.Millisecond)
	sc.mustHearEnds(started, 3000*time.Millisecond)
	sc.streamEnded()
	sc.answer(url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.93"}})
	checkMeasuredRecord(t, c.instances[0].svc, sid, c.lib.Default().ID, fx, consent.SourceSpeech, true)
}

// With a recognizer, the stream decides first on the instance running it:
// the record is source media_stream with the measured timings (the caller
// spoke over the must-hear part: not complete), the live call is moved to
// the read-back through Twilio's REST API, and the Gather's result landing
// afterwards on the other instance reads the same decision back and
// records nothing.
func TestStreamDecidesAcrossInstances(t *testing.T) {
	t.Parallel()
	dg := deepgramtest.NewServer(deepgramtest.Config{APIKey: "dg-key", Script: []deepgramtest.Step{
		deepgramtest.SpeechStartedAt(2650),
		deepgramtest.InterimAt(3200, "no", 0.7),
		deepgramtest.FinalAt(4300, "no, I do not agree", 0.92, true),
		deepgramtest.UtteranceEndAt(5300),
	}})
	t.Cleanup(dg.Close)
	c := newCluster(t, clusterOptions{instances: 2, streams: true,
		recognizer: deepgram.Recognizer{Config: deepgram.Config{APIKey: "dg-key", URL: dg.URL}}})
	fx := fixtureCall(t, "dev_decline_bg")
	sid := "CA" + strings.Repeat("7e", 16)
	started := time.Now()
	sc := startStreamedCall(t, c.instances[0].twilio, c.instances[1].twilio, c.lib, sid, fx, 5500*time.Millisecond)
	sc.mustHearEnds(started, 3000*time.Millisecond)
	sc.streamEnded()

	rec := checkMeasuredRecord(t, c.instances[0].svc, sid, c.lib.Default().ID, fx, consent.SourceMediaStream, false)
	if rec.Decision != consent.Declined {
		t.Fatalf("decision %s", rec.Decision)
	}
	updates := c.rest.updates()
	if len(updates) != 1 || !strings.HasPrefix(updates[0], sid+" "+publicBase+ivr.PathDecided+"?") {
		t.Fatalf("Twilio REST updates %v", updates)
	}
	// Twilio fetches the read-back URL it was given.
	moved, err := sc.call.TwiML(context.Background(), strings.TrimPrefix(updates[0], sid+" "), sc.call.Params(nil))
	if err != nil {
		t.Fatal(err)
	}
	if said := moved.Spoken(); len(said) == 0 || said[0].Text != c.lib.Default().ReadBack[consent.Declined] {
		t.Fatalf("decided URL answered %s", moved.Raw)
	}
	resp := sc.answer(url.Values{"SpeechResult": {"no I do not agree"}, "Confidence": {"0.9"}})
	if said := resp.Spoken(); len(said) == 0 || said[0].Text != c.lib.Default().ReadBack[consent.Declined] {
		t.Fatalf("late Gather read back %s", resp.Raw)
	}
	if n := c.recordCount(); n != 1 {
		t.Fatalf("%d records", n)
	}
}
