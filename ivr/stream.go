package ivr

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	twilioapi "github.com/twilio/twilio-go/rest/api/v2010"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/mediastream"
	"github.com/consentline/consentline/twiml"
)

// The media stream's routes. PathStream is the websocket Twilio opens for
// <Start><Stream> (served by mediastream.Server, mounted by the caller);
// the others are signed webhooks like the rest.
const (
	PathStream       = "/voice/stream"
	PathStreamStatus = "/voice/stream-status"
	PathHeard        = "/voice/heard"
	PathDecided      = "/voice/decided"
)

// StreamName is the name of the media stream measuring a call's disclosure
// in language: one per script, so a disclosure restarted in another
// language can stop the earlier stream by name.
func StreamName(language string) string { return "consent-" + language }

// StreamURL is the wss:// URL of the media stream for a public base URL
// (https://host → wss://host/voice/stream). Twilio connects to it exactly
// as written and signs that string.
func StreamURL(publicBaseURL string) string {
	host := strings.TrimRight(publicBaseURL, "/")
	host = strings.TrimPrefix(strings.TrimPrefix(host, "https://"), "http://")
	return "wss://" + host + PathStream
}

// disclosureURLs are the callback URLs of a disclosure in script: the
// answer Gather's and, when media streams are on, the stream to start and
// the redirect marking the end of the must-hear part. restartedFrom is the
// script the call heard before (nil on the first disclosure), whose stream
// is stopped.
func (s *Server) disclosureURLs(st flowState, script, restartedFrom *twiml.Script) twiml.GatherURLs {
	if !s.cfg.MediaStreams {
		return s.gatherURLs(st)
	}
	st.Stream = true
	g := s.gatherURLs(st)
	g.Stream = &twiml.Stream{
		Name:           StreamName(script.Language),
		URL:            StreamURL(s.base),
		StatusCallback: s.base + PathStreamStatus,
		Parameters:     [][2]string{{mediastream.ParamScript, script.ID}, {mediastream.ParamLanguage, script.Language}},
	}
	if restartedFrom != nil {
		g.Stream.Stop = StreamName(restartedFrom.Language)
	}
	g.MustHearDone = s.url(PathHeard, st)
	return g
}

// heard is Twilio's redirect after the last must-hear <Say>: its arrival is
// the moment the must-hear part finished playing. The moment is stored
// after answering (the caller hears the rest of the disclosure whatever
// the database is doing; without it the measurement counts the must-hear
// part complete only for answers Twilio's <Gather> heard).
func (s *Server) heard(w http.ResponseWriter, r *http.Request) {
	at := s.cfg.Now()
	st := parseFlowState(r.URL.RawQuery, at)
	script := s.script(st.Language)
	callSID := r.PostForm.Get("CallSid")
	s.detached.Add(1)
	go func() {
		defer s.detached.Done()
		ctx, cancel := context.WithTimeout(context.Background(), rememberTimeout)
		defer cancel()
		if err := s.cfg.Consent.MustHearEnded(ctx, callSID, script.ID, at); err != nil {
			s.cfg.Logger.Warn("must-hear end not stored; the record will say it from the stream alone", "call_sid", callSID, "error", err)
		}
	}()
	s.writeTwiML(w, r)(twiml.AfterMustHear(script, s.gatherURLs(st)))
}

// streamStatus takes the stream's status callback. A stream error is
// logged and the call goes on without the stream: its answer comes from
// the Gather, and its timings stay estimated unless the stream measured
// them before it failed.
func (s *Server) streamStatus(w http.ResponseWriter, r *http.Request) {
	f := r.PostForm
	switch event := f.Get("StreamEvent"); event {
	case "stream-error":
		// StreamError is Twilio's text about the stream, not the caller's.
		s.cfg.Metrics.StreamError(telemetry.StreamErrorTwilio)
		s.cfg.Logger.Warn("media stream failed; the call goes on without it", "call_sid", f.Get("CallSid"),
			"stream_sid", f.Get("StreamSid"), "stream", f.Get("StreamName"), "twilio_error", f.Get("StreamError"))
	default:
		s.cfg.Logger.Debug("media stream status", "call_sid", f.Get("CallSid"), "stream_sid", f.Get("StreamSid"), "event", event)
	}
	w.WriteHeader(http.StatusNoContent)
}

// decided is where a call goes when its media stream decided first
// (MoveToReadBack): the read-back of the decision recorded. A call that has
// none (it cannot, unless the record was lost) hears the question again.
func (s *Server) decided(w http.ResponseWriter, r *http.Request) {
	st := parseFlowState(r.URL.RawQuery, s.cfg.Now())
	script := s.script(st.Language)
	callSID := r.PostForm.Get("CallSid")
	rec, err := within(s, r, func(ctx context.Context) (*consent.Record, error) {
		rec, ok, err := s.cfg.Consent.Decision(ctx, callSID, script.ID)
		if !ok || err != nil {
			return nil, err
		}
		return &rec, nil
	})
	switch {
	case err != nil:
		s.hold(w, r, script, st, "reading the stream's decision", err)
	case rec == nil:
		s.writeTwiML(w, r)(twiml.Reprompt(script, max(st.Attempt, 1), s.gatherURLs(st)))
	default:
		s.readBack(w, r, script, rec.Decision)
	}
}

// MoveToReadBack moves a live call to the read-back of its decision for
// script: the media stream recognized the answer before the Gather
// returned it. It uses Twilio's REST API (Update Call with a new URL);
// when that fails the Gather's callback still reads the decision back.
func (s *Server) MoveToReadBack(ctx context.Context, callSID string, script consent.ScriptRef) error {
	if s.cfg.UpdateCallURL == nil {
		return fmt.Errorf("ivr: moving call %s: no Twilio REST client configured", callSID)
	}
	return s.cfg.UpdateCallURL(ctx, callSID, s.url(PathDecided, flowState{Language: script.Language, Started: s.cfg.Now(), Stream: true}))
}

// TwilioUpdateCallURL returns a Config.UpdateCallURL that redirects a live
// call to new TwiML with Twilio's REST API (Update Call, Url and Method).
func TwilioUpdateCallURL(api *twilioapi.ApiService) func(ctx context.Context, callSID, url string) error {
	return func(ctx context.Context, callSID, url string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		params := (&twilioapi.UpdateCallParams{}).SetUrl(url).SetMethod(http.MethodPost)
		if _, err := api.UpdateCall(callSID, params); err != nil {
			return fmt.Errorf("twilio: update call %s: %w", callSID, err)
		}
		return nil
	}
}

// measuredHeard replaces an answer's estimated timings with what the call's
// media stream measured, when the disclosure started one and it measured
// the answer's onset. An answer to a re-prompt keeps the estimate, labelled
// so: the disclosure had played in full before the re-prompt, but the
// stream's outbound speech runs on into the re-prompt, and where the one
// ends and the other begins is not measured.
func (s *Server) measuredHeard(ctx context.Context, st flowState, a *consent.Answer) error {
	if !st.Stream || st.Attempt > 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, streamDecisionTimeout)
	defer cancel()
	h, ok, err := s.cfg.Consent.MeasuredHeard(ctx, a.CallSID, a.Script.ID, true)
	if err != nil || !ok {
		return err
	}
	a.Heard = h
	return nil
}

// streamDecisionTimeout bounds reading a stream's measurement inside a
// decision; past it the decision keeps its estimate rather than hold.
const streamDecisionTimeout = 300 * time.Millisecond
