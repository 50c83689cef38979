// Package ivr answers Twilio's voice webhooks: it walks a caller through the
// consent disclosure in TwiML and hands their answers to consent.Service.
//
// Every handler answers within AnswerDeadline whatever the database or lock
// backend is doing: when a dependency fails, the caller hears a short hold
// line and the call is redirected back into the flow, never an error.
package ivr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"golang.org/x/time/rate"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/twiml"
)

// Routes Twilio calls; /voice/incoming and /voice/status are configured on
// the number (CONTRACT.md §1), the others Twilio learns from the TwiML.
const (
	PathIncoming = "/voice/incoming"
	PathStatus   = "/voice/status"
	PathLanguage = "/voice/language"
	PathGather   = "/voice/gather"
	PathPartial  = "/voice/partial"
	PathResume   = "/voice/resume"
)

// maxReprompts bounds how often an unclear answer is asked again before the
// call closes as no_response.
const maxReprompts = 2

// Config wires the IVR.
type Config struct {
	// PublicBaseURL is the URL Twilio reaches this service at, without a
	// trailing slash; every callback URL and signature check builds on it.
	PublicBaseURL string
	AuthToken     string
	Scripts       *twiml.Library
	Consent       *consent.Service
	// AccountSID is TWILIO_ACCOUNT_SID: every webhook's AccountSid must
	// equal it (an empty one admits no webhook).
	AccountSID string
	// Ready reports whether dependencies are reachable, for /readyz; a
	// NotReady error names the backend that is not.
	Ready func(ctx context.Context) error
	// CallCompleted, when set, is told of every finished call that was
	// decided before it ended (the relay's call.completed event). A call
	// that ended undecided needs no call: its no_response record carries
	// the event into the record's own transaction (consent.Outbox,
	// relay.Outbox.Append).
	CallCompleted func(ctx context.Context, c CallStatus) error
	// FetchCallStatus asks Twilio for a call's status and duration (its
	// REST API's Fetch Call; see TwilioCallStatus). SweepEnded uses it to
	// close calls whose status callback was lost.
	FetchCallStatus func(ctx context.Context, callSID string) (status string, duration time.Duration, err error)
	// MediaStreams starts a media stream of both tracks before each
	// disclosure (its measurement replaces the timing estimate) and marks
	// the end of the must-hear part with a redirect. The stream itself is
	// served at PathStream by mediastream.Server, mounted by the caller.
	MediaStreams bool
	// UpdateCallURL redirects a live call to url (Twilio's REST Update
	// Call; see TwilioUpdateCallURL): MoveToReadBack uses it when the media
	// stream decided first.
	UpdateCallURL func(ctx context.Context, callSID, url string) error
	Logger        *slog.Logger
	// DecisionTimeout bounds the work behind one webhook (default 1 s).
	DecisionTimeout time.Duration
	// AnswerDeadline bounds the answer (default 1.5 s, well inside Twilio's
	// 15 s and the contract's 2 s): work can outlive its context (pgstore
	// lets a statement run up to 600 ms past it while PostgreSQL
	// acknowledges the cancel, which a stalled server never does), and the
	// caller hears a hold line rather than wait for it.
	AnswerDeadline time.Duration
	// MaxInFlight bounds the decision work this instance runs at once
	// (default 128); the bound in force adapts between MinInFlight
	// (default 4) and it to what the instance finishes in time (see
	// admission). Work beyond it waits for a slot for at most AdmitWait
	// (default ¾ of DecisionTimeout); work that cannot start by then gets the
	// hold answer at once, rather than a goroutine that would still be
	// queueing on the database after its caller heard the hold line.
	MaxInFlight int
	MinInFlight int
	AdmitWait   time.Duration
	// IntakeSlots bounds the webhooks being checked and answered at once
	// while the instance is at capacity, decision work aside (default half
	// of GOMAXPROCS, at least 1; see intake).
	IntakeSlots int
	Now         func() time.Time
	// Metrics, when set, counts the answers by kind, the holds by cause,
	// the work admission refused, and reads the admission limit on scrape
	// (nil: none).
	Metrics *telemetry.Metrics
}

// CallStatus is what Twilio's status callback says of a finished call.
type CallStatus struct {
	CallSID  string
	Status   string
	From, To string
	Duration time.Duration
	Script   consent.ScriptRef
}

// Server is the IVR's HTTP handler.
type Server struct {
	cfg    Config
	base   string
	router chi.Router

	// admit bounds the decision work in flight; detached counts the work
	// goroutines still running, including those whose webhook was already
	// answered, so Drain can wait for them before the stores close.
	admit    *admission
	detached sync.WaitGroup
	// refusedLog paces the log line for work admission refused;
	// refusedUnlogged counts the refusals since the last line.
	refusedLog      *rate.Limiter
	refusedUnlogged atomic.Int64
}

// New returns the IVR server.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DecisionTimeout <= 0 {
		cfg.DecisionTimeout = time.Second
	}
	if cfg.AnswerDeadline <= 0 {
		cfg.AnswerDeadline = 1500 * time.Millisecond
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 128
	}
	if cfg.MinInFlight <= 0 {
		cfg.MinInFlight = min(4, cfg.MaxInFlight)
	}
	if cfg.AdmitWait <= 0 {
		cfg.AdmitWait = cfg.DecisionTimeout * 3 / 4
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IntakeSlots <= 0 {
		cfg.IntakeSlots = max(1, runtime.GOMAXPROCS(0)/2)
	}
	s := &Server{cfg: cfg, base: strings.TrimRight(cfg.PublicBaseURL, "/"), admit: newAdmission(cfg.MinInFlight, cfg.MaxInFlight),
		refusedLog: rate.NewLimiter(rate.Every(time.Second), 1)}
	in := newIntake(cfg.IntakeSlots, s.admit.saturated)
	cfg.Metrics.WatchAdmission(s.admit.current)

	r := chi.NewRouter()
	r.Get("/healthz", s.healthz)
	r.Get("/readyz", s.readyz)
	r.Group(func(r chi.Router) {
		// Shapes are checked after the signature: an unsigned request is
		// refused whatever it carries, and a signed one can still be re-cut.
		r.Use(in.middleware, RequireTwilioSignature(s.base, cfg.AuthToken, cfg.Logger), requireTwilioParams(cfg.AccountSID, cfg.Logger))
		// Only now is the CallSid signed and of Twilio's shape: the access
		// log may show it.
		r.Use(noteCallSID)
		r.Post(PathIncoming, s.incoming)
		r.Post(PathLanguage, s.language)
		r.Post(PathGather, s.gather)
		r.Post(PathPartial, s.partial)
		r.Post(PathResume, s.resume)
		r.Post(PathStatus, s.status)
		r.Post(PathHeard, s.heard)
		r.Post(PathStreamStatus, s.streamStatus)
		r.Post(PathDecided, s.decided)
	})
	s.router = r
	return s
}

// Router exposes the chi router so later features (the media stream,
// metrics) can mount beside the voice routes.
func (s *Server) Router() chi.Router { return s.router }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

// Drain waits until no decision work is running, or ctx ends. Call it after
// the HTTP server has shut down and before the stores close: work whose
// webhook was answered with a hold may still be committing a decision.
func (s *Server) Drain(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.detached.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("ivr: decision work still running: %w", context.Cause(ctx))
	}
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if s.cfg.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		if err := s.cfg.Ready(ctx); err != nil {
			// The body names the backend and nothing more: /readyz is
			// public, and the error's detail is for the log.
			body := "not ready\n"
			var nr NotReady
			if errors.As(err, &nr) {
				body = "not ready: " + nr.Backend + "\n"
			}
			s.cfg.Logger.Warn("not ready", "backend", nr.Backend, "error", err)
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(body))
			return
		}
	}
	_, _ = w.Write([]byte("ready\n"))
}

// incoming answers a new call: greeting with the language choice, the
// must-hear disclosure, then the interruptible rest inside a Gather.
func (s *Server) incoming(w http.ResponseWriter, r *http.Request) {
	script := s.cfg.Scripts.Default()
	// The disclosure starts after the greeting and the pause for a language
	// key, not when this TwiML is served.
	started := s.cfg.Now().Add(time.Duration(s.cfg.Scripts.GreetingMS(script)) * time.Millisecond)
	st := flowState{Language: script.Language, Started: started}
	s.remember(s.call(r, script))
	s.cfg.Metrics.Answer(telemetry.AnswerTwiML)
	s.writeTwiML(w, r)(twiml.Incoming(s.cfg.Scripts, script, s.url(PathLanguage, st), s.disclosureURLs(st, script, nil)))
}

// rememberTimeout bounds remembering a started call.
const rememberTimeout = 5 * time.Second

// remember stores that call started (or switched script) so that the sweep
// can close it if its status callback is lost. It runs after the answer, not
// before: the caller hears the disclosure whatever the database is doing,
// and a call that could not be remembered still gets its no_response from
// the status callback in the usual case.
func (s *Server) remember(call consent.Call) {
	s.detached.Add(1)
	go func() {
		defer s.detached.Done()
		ctx, cancel := context.WithTimeout(context.Background(), rememberTimeout)
		defer cancel()
		if err := s.cfg.Consent.CallStarted(ctx, call); err != nil {
			s.cfg.Logger.Warn("started call not remembered; only its status callback can close it", "call_sid", call.CallSID, "error", err)
		}
	}()
}

// language switches the call to the script the pressed key chooses.
func (s *Server) language(w http.ResponseWriter, r *http.Request) {
	script, ok := s.cfg.Scripts.ByLanguageKey(r.PostForm.Get("Digits"))
	if !ok {
		script = s.cfg.Scripts.Default()
	} else {
		s.remember(s.call(r, script))
	}
	s.disclosure(w, r, script, nil)
}

// disclosure reads script's disclosure; restartedFrom is the script whose
// disclosure it replaces, if any.
func (s *Server) disclosure(w http.ResponseWriter, r *http.Request, script, restartedFrom *twiml.Script) {
	st := flowState{Language: script.Language, Started: s.cfg.Now()}
	s.cfg.Metrics.Answer(telemetry.AnswerTwiML)
	s.writeTwiML(w, r)(twiml.Disclosure(script, s.disclosureURLs(st, script, restartedFrom)))
}

// gather takes a Gather's final result (or a confirmation key) and decides.
func (s *Server) gather(w http.ResponseWriter, r *http.Request) {
	now := s.cfg.Now()
	st := parseFlowState(r.URL.RawQuery, now)
	script := s.script(st.Language)
	form := r.PostForm

	digits := form.Get("Digits")
	if other, ok := s.cfg.Scripts.ByLanguageKey(digits); ok && other != script && st.Attempt == 0 {
		// The language key pressed during the disclosure: start it over in
		// the chosen language rather than reading it as an answer.
		s.remember(s.call(r, other))
		s.disclosure(w, r, other, script)
		return
	}

	answer := consent.Answer{Call: s.call(r, script)}
	answer.Heard = st.heard(script, now)
	if digits != "" {
		answer.Source = consent.SourceDTMF
		answer.Intent = script.IntentForDigits(digits)
	} else {
		answer.Source = consent.SourceSpeech
		answer.Transcript = form.Get("SpeechResult")
		answer.Confidence = parseConfidence(form.Get("Confidence"))
	}

	out, err := within(s, r, func(ctx context.Context) (consent.Outcome, error) {
		if err := s.measuredHeard(ctx, st, &answer); err != nil {
			// The decision is the caller's; how it is timed must not hold
			// it up. The estimate stays, labelled as one.
			s.cfg.Logger.Warn("stream measurement not read; timings stay estimated", "call_sid", answer.CallSID, "error", err)
		}
		out, err := s.cfg.Consent.Decide(ctx, answer)
		if err != nil || out.Recorded || out.NeedsConfirmation || st.Attempt < maxReprompts {
			return out, err
		}
		// The last re-prompt went unanswered too: close as no_response.
		rec, created, err := s.cfg.Consent.RecordNoResponse(ctx, answer.Call, answer.Source, answer.Heard)
		out.Recorded, out.Created, out.Record = err == nil, created, rec
		return out, err
	})
	if err != nil {
		s.hold(w, r, script, st, "deciding", err)
		return
	}
	switch {
	case out.Recorded:
		s.logDecision(answer.CallSID, out)
		s.readBack(w, r, script, out.Record.Decision)
	case out.NeedsConfirmation:
		// The Gather's action is this handler: the key pressed decides.
		s.cfg.Metrics.Answer(telemetry.AnswerConfirm)
		s.writeTwiML(w, r)(twiml.Confirm(script, s.url(PathGather, st)))
	default:
		st.Attempt++
		s.cfg.Metrics.Answer(telemetry.AnswerReprompt)
		s.writeTwiML(w, r)(twiml.Reprompt(script, st.Attempt, s.gatherURLs(st)))
	}
}

var (
	// errPastDeadline is the error of work that had not finished when its
	// webhook had to be answered.
	errPastDeadline = errors.New("work not finished by the webhook's answer deadline")
	// errOverloaded is the error of work refused by admission control: it
	// could not start within AdmitWait.
	errOverloaded = errors.New("instance at capacity: decision work not admitted in time")
)

// within runs the work behind a webhook with the webhook's budget.
//
// Admission: the work takes one of the slots admission allows (a limit
// that adapts up to MaxInFlight), waiting at most AdmitWait; work that cannot start by then is not started at all and the
// caller hears a hold line at once. Under a burst this keeps the instance
// doing as much as it can finish in time, instead of every request starting
// and all of them missing their deadline together.
//
// The work gets a context ending DecisionTimeout after the request arrived,
// detached from the request's own (a decision the caller made is still
// recorded if Twilio hangs up on us); the answer waits at most
// AnswerDeadline even if a backend ignores that context (a stalled server
// never acknowledges a cancel), so the caller hears a hold line, never
// silence. Work still running then finishes or fails on its own, counted
// for Drain; the next delivery reads back whatever it recorded.
func within[T any](s *Server, r *http.Request, work func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	// Real time, not cfg.Now: deadlines are about this process, not the call.
	arrived := time.Now()
	leaveIntake(r) // from here the handler waits; see intake
	if !s.admit.acquire(s.cfg.AdmitWait) {
		s.cfg.Metrics.AdmissionRefused()
		return zero, errOverloaded
	}
	// Timed from arrival; made only for admitted work (a refusal's cost
	// is paid by every webhook a burst past capacity sends).
	answerBy := time.NewTimer(s.cfg.AnswerDeadline - time.Since(arrived))
	defer answerBy.Stop()

	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	s.detached.Add(1)
	go func() {
		defer s.detached.Done()
		ctx, cancel := context.WithDeadline(context.WithoutCancel(r.Context()), arrived.Add(s.cfg.DecisionTimeout))
		defer cancel()
		v, err := work(ctx)
		// Finishing in time, even with an error from a backend that is
		// down, is no sign of overload; running out of time is.
		s.admit.release(time.Since(arrived) < s.cfg.AnswerDeadline && !errors.Is(err, context.DeadlineExceeded))
		done <- result{v, err}
	}()
	select {
	case res := <-done:
		return res.v, res.err
	case <-answerBy.C:
		return zero, errPastDeadline
	}
}

// partial takes a partial speech result. Twilio takes no TwiML from it, so
// it is always answered with an empty 204. A partial never decides: it is a
// prefix of what the caller is saying ("yes, can you repeat that? no, I do
// not agree"), and Twilio's Stability is no recognizer confidence. The
// Gather's final result decides; where the caller started speaking is for
// the media stream to measure, not for a partial's arrival time to guess.
func (s *Server) partial(w http.ResponseWriter, r *http.Request) {
	w.WriteHeader(http.StatusNoContent)
}

// resume brings a call back into the flow after a hold: the question again.
func (s *Server) resume(w http.ResponseWriter, r *http.Request) {
	st := parseFlowState(r.URL.RawQuery, s.cfg.Now())
	script := s.script(st.Language)
	s.cfg.Metrics.Answer(telemetry.AnswerReprompt)
	s.writeTwiML(w, r)(twiml.Reprompt(script, max(st.Attempt, 1), s.gatherURLs(st)))
}

// status records a call that ended without a decision as no_response and
// tells the relay the call completed.
func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	form := r.PostForm
	callStatus := form.Get("CallStatus")
	if !callEnded(callStatus) {
		w.WriteHeader(http.StatusNoContent)
		return // ringing, in-progress: nothing has ended yet
	}
	call := s.call(r, s.cfg.Scripts.Default())
	secs, _ := strconv.Atoi(form.Get("CallDuration"))
	_, err := within(s, r, func(ctx context.Context) (struct{}, error) {
		// The no_response names the script the caller heard: the one
		// remembered for the call (they may have chosen Spanish).
		if ref, ok, err := s.cfg.Consent.StartedScript(ctx, call.CallSID); err != nil {
			return struct{}{}, fmt.Errorf("reading the call's script: %w", err)
		} else if ok {
			call.Script = ref
		}
		return struct{}{}, s.closeCall(ctx, call, callStatus, time.Duration(secs)*time.Second)
	})
	if err != nil {
		// A 5xx tells Twilio (and its debugger) the callback was not taken.
		// Twilio does not retry it: SweepEnded finds the call later.
		s.cfg.Logger.Error("status callback not recorded", "call_sid", call.CallSID, "error", err)
		s.cfg.Metrics.StatusCallbackRefused()
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// callEnded reports whether a Twilio CallStatus is final.
func callEnded(status string) bool {
	switch status {
	case "completed", "busy", "failed", "no-answer", "canceled":
		return true
	}
	return false
}

// closeCall records no_response for a call that ended without a decision
// (nothing when it has one) and relays call.completed.
func (s *Server) closeCall(ctx context.Context, call consent.Call, status string, duration time.Duration) error {
	// How much of the disclosure a caller who hung up heard is known only
	// from the call's media stream; without one the record says nothing
	// was measured (timing estimated, nothing counted as heard).
	heard := consent.Heard{Timing: consent.TimingEstimated}
	if s.cfg.MediaStreams {
		heard = s.cfg.Consent.HeardUntilHangUp(ctx, call.CallSID, call.Script.ID)
	}
	rec, created, err := s.cfg.Consent.RecordNoResponse(ctx, call, consent.SourceStatusCallback, heard)
	if err != nil {
		return fmt.Errorf("recording no_response: %w", err)
	}
	if created {
		s.cfg.Logger.Info("call ended without a decision", "call_sid", call.CallSID, "decision", rec.Decision)
	}
	if created || s.cfg.CallCompleted == nil {
		// A no_response created here carried the call's call.completed
		// event into its own transaction (the store's outbox:
		// relay.Outbox.Append); a call decided earlier has none yet.
		return nil
	}
	cs := CallStatus{CallSID: call.CallSID, Status: status, From: call.From, To: call.To, Duration: duration, Script: rec.Script}
	if err := s.cfg.CallCompleted(ctx, cs); err != nil {
		return fmt.Errorf("relaying call.completed: %w", err)
	}
	return nil
}

// SweepEnded closes the calls that started before startedBefore, have no
// decision, and have ended according to Twilio: the calls whose status
// callback was lost (the database or Redis was down when it came, and
// Twilio does not retry a status callback). Calls still in progress are
// left for a later sweep. It returns how many calls it closed; an error
// from one call is logged and the sweep goes on.
func (s *Server) SweepEnded(ctx context.Context, startedBefore time.Time) (int, error) {
	if s.cfg.FetchCallStatus == nil {
		return 0, errors.New("ivr: sweep needs FetchCallStatus")
	}
	calls, err := s.cfg.Consent.Unsettled(ctx, startedBefore, sweepBatch)
	if err != nil {
		return 0, fmt.Errorf("ivr: sweep: %w", err)
	}
	closed := 0
	for _, call := range calls {
		status, duration, err := s.cfg.FetchCallStatus(ctx, call.CallSID)
		if err != nil {
			s.cfg.Logger.Warn("sweep: fetching call status", "call_sid", call.CallSID, "error", err)
			continue
		}
		if !callEnded(status) {
			continue
		}
		if err := s.closeCall(ctx, call, status, duration); err != nil {
			s.cfg.Logger.Error("sweep: closing ended call", "call_sid", call.CallSID, "error", err)
			continue
		}
		closed++
	}
	return closed, nil
}

// sweepBatch bounds the calls one sweep asks Twilio about.
const sweepBatch = 100

func (s *Server) readBack(w http.ResponseWriter, r *http.Request, script *twiml.Script, d consent.Decision) {
	s.cfg.Metrics.Answer(telemetry.AnswerReadBack)
	if d == consent.NoResponse {
		s.writeTwiML(w, r)(twiml.NoResponse(script))
		return
	}
	s.writeTwiML(w, r)(twiml.ReadBack(script, d))
}

// hold keeps the call alive when a dependency failed: a hold line, a pause
// and a redirect back to the question. Nothing was recorded, so the caller
// answering again cannot produce a second record.
func (s *Server) hold(w http.ResponseWriter, r *http.Request, script *twiml.Script, st flowState, what string, err error) {
	if errors.Is(err, errOverloaded) {
		// Refused work is counted one by one (metrics) but logged at most
		// once a second, here and not in the access log: a line per
		// refusal would make a burst's cost grow with the burst.
		telemetry.NoteShed(r.Context())
		if n := s.refusedUnlogged.Add(1); s.refusedLog.Allow() {
			s.refusedUnlogged.Add(-n)
			s.cfg.Logger.Warn("webhooks degraded to hold: instance at capacity", "refused", n, "error", err)
		}
	} else {
		s.cfg.Logger.Error("webhook degraded to hold", "path", r.URL.Path, "step", what, "error", err)
	}
	s.cfg.Metrics.Answer(telemetry.AnswerHold)
	s.cfg.Metrics.Hold(holdCause(err))
	s.writeTwiML(w, r)(twiml.Hold(script, s.url(PathResume, st)))
}

// holdCause names why work behind a webhook ended in a hold.
func holdCause(err error) string {
	switch {
	case errors.Is(err, errOverloaded):
		return telemetry.HoldOverloaded
	case errors.Is(err, errPastDeadline):
		return telemetry.HoldPastDeadline
	}
	return telemetry.HoldError
}

// noteCallSID gives the access log the webhook's CallSid (checked by
// requireTwilioParams before it).
func noteCallSID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		telemetry.NoteCallSID(r.Context(), r.PostForm.Get("CallSid"))
		next.ServeHTTP(w, r)
	})
}

func (s *Server) logDecision(callSID string, out consent.Outcome) {
	s.cfg.Logger.Info("consent decided", "call_sid", callSID, "decision", out.Record.Decision,
		"source", out.Record.Source, "created", out.Created, "barge_in", out.Record.BargeIn)
}

// writeTwiML returns a function writing a rendered TwiML document, so
// handlers can pass a renderer's two results straight in.
func (s *Server) writeTwiML(w http.ResponseWriter, r *http.Request) func([]byte, error) {
	return func(doc []byte, err error) {
		if err != nil {
			// Rendering a validated script cannot fail; if it does, the
			// caller still gets valid TwiML rather than Twilio's error voice.
			s.cfg.Logger.Error("rendering TwiML", "path", r.URL.Path, "error", err)
			doc = twiml.Empty()
		}
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		_, _ = w.Write(doc)
	}
}

func (s *Server) script(language string) *twiml.Script {
	if script, ok := s.cfg.Scripts.ByLanguage(language); ok {
		return script
	}
	return s.cfg.Scripts.Default()
}

func (s *Server) call(r *http.Request, script *twiml.Script) consent.Call {
	f := r.PostForm
	return consent.Call{CallSID: f.Get("CallSid"), Script: script.Ref(), From: f.Get("From"), To: f.Get("To")}
}

func (s *Server) url(path string, st flowState) string {
	return s.base + path + "?" + st.query()
}

func (s *Server) gatherURLs(st flowState) twiml.GatherURLs {
	return twiml.GatherURLs{Action: s.url(PathGather, st), PartialResult: s.url(PathPartial, st)}
}

// parseConfidence reads Twilio's Confidence or Stability; absent or
// malformed is nil ("no confidence"), never a guess.
func parseConfidence(v string) *float64 {
	if v == "" {
		return nil
	}
	f, err := strconv.ParseFloat(v, 64)
	// Written so NaN fails it (NaN compares false with everything): a NaN
	// confidence reached the store, which refused the record, and the
	// caller heard the hold line again and again. ±Inf is out of range.
	if err != nil || !(f >= 0 && f <= 1) {
		return nil
	}
	return &f
}
