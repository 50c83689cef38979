// Package loadtest drives many simulated calls against a running
// ConsentLine instance, as Twilio would send them, and measures what the
// instance did: latency per route, hold lines, errors, and the decisions
// each call should have left behind. `consentline loadtest` runs it.
//
// Each call follows the TwiML it is answered with (ivr/twiliosim signs
// every request as Twilio does): the incoming webhook, the must-hear
// redirect, an answer from a fixed mix (spoken agree or decline with a
// confidence, a key, silence then a re-prompt answered, an unclear answer
// then a clear one, speech without a confidence confirmed by a key, a
// caller who hangs up during the disclosure), then the status callback.
// With Streams, each call's media stream plays internal/democall's
// generated two-track audio at real-time pace beside the webhooks, as the
// demo does, and the answer comes after the caller's generated answer.
//
// The numbers the calls carry are fictional (555 numbers) and nothing the
// package reports holds them or what the callers said.
package loadtest

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/consentline/consentline/internal/democall"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
)

// Config is one load test.
type Config struct {
	// Target is where requests really go, e.g. http://127.0.0.1:8080.
	Target string
	// PublicBaseURL is what the instance believes Twilio reaches it at
	// (its PUBLIC_BASE_URL): every signature is computed on it. Empty:
	// Target.
	PublicBaseURL string
	// AccountSID and AuthToken are the instance's Twilio credentials.
	AccountSID, AuthToken string

	Calls       int     // calls in all
	Concurrency int     // calls in flight at once
	Rate        float64 // new calls per second; 0: as fast as Concurrency allows
	// Streams plays each call's media stream at real-time pace.
	Streams bool
	// Duplicates is the fraction of calls whose final Gather result is
	// delivered twice at once, as Twilio's retry of a slow webhook is.
	Duplicates float64
	// Seed chooses which calls get a duplicate (0: random).
	Seed uint64
	// HTTP sends the webhooks; nil: a client sized for Concurrency with
	// Twilio's 15-second timeout.
	HTTP *http.Client
}

// Routes the report names besides the webhooks' paths.
const (
	// RouteStreamUpgrade is the media stream's websocket upgrade.
	RouteStreamUpgrade = ivr.PathStream + " (upgrade)"
)

// Decisions a call leaves behind, as consent records name them.
const (
	Granted    = "granted"
	Declined   = "declined"
	NoResponse = "no_response"
)

// Outcomes lists the decisions in the order reports show them.
var Outcomes = []string{Granted, Declined, NoResponse}

// holdPause is the hold line's <Pause>: Twilio follows the redirect after it.
const holdPause = time.Second

// maxHolds bounds the hold lines one answer may draw before the call counts
// as failed (Twilio would go on; a load test has to end).
const maxHolds = 5

// The streamed call's timeline, on internal/democall's generated audio:
// the must-hear part has played 3 s in (the demo's moment), the caller's
// answer starts at democall.CallerOnsetMS, and the stream ends at
// streamStopMS, as the demo's does. A caller who hangs up does so 2 s in.
const (
	mustHearMS   = 3000
	streamStopMS = 7200
	hangUpMS     = 2000
)

// Progress is a running test's counters.
type Progress struct {
	Calls    int // in all
	Started  int
	Done     int // finished, with or without an error
	Failed   int // calls with at least one error
	InFlight int
	Holds    int
	Errors   int
	Elapsed  time.Duration
}

// Test is one load test in progress.
type Test struct {
	cfg   Config
	tw    *twiliosim.Twilio
	audio democall.Call

	began                                        time.Time
	started, done, failed, inFlight, holds, errs atomic.Int64
	duplicates                                   atomic.Int64

	mu           sync.Mutex
	latencies    map[string][]time.Duration
	errKinds     map[string]int
	samples      []string
	expected     map[string]int
	clean        []string // SIDs of the calls that finished without an error
	peakInFlight int
	all          []string // SIDs of every call started
}

// New checks cfg and returns the test, not yet running.
func New(cfg Config) (*Test, error) {
	switch {
	case cfg.Target == "":
		return nil, errors.New("loadtest: no target")
	case cfg.AccountSID == "" || cfg.AuthToken == "":
		return nil, errors.New("loadtest: no Twilio credentials")
	case cfg.Calls < 1:
		return nil, errors.New("loadtest: calls must be at least 1")
	case cfg.Concurrency < 1:
		return nil, errors.New("loadtest: concurrency must be at least 1")
	case cfg.Rate < 0 || math.IsNaN(cfg.Rate) || math.IsInf(cfg.Rate, 0):
		return nil, errors.New("loadtest: rate must be a number of calls per second, 0 for no limit")
	case !(cfg.Duplicates >= 0 && cfg.Duplicates <= 1):
		return nil, errors.New("loadtest: duplicates must be a fraction from 0 to 1")
	}
	cfg.Target = strings.TrimRight(cfg.Target, "/")
	if cfg.PublicBaseURL == "" {
		cfg.PublicBaseURL = cfg.Target
	}
	cfg.PublicBaseURL = strings.TrimRight(cfg.PublicBaseURL, "/")
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{
			Timeout: 15 * time.Second, // Twilio's webhook timeout
			Transport: &http.Transport{
				Proxy:               nil, // the instance is reached directly
				MaxIdleConns:        2 * cfg.Concurrency,
				MaxIdleConnsPerHost: 2 * cfg.Concurrency,
				IdleConnTimeout:     30 * time.Second,
			},
		}
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}
	t := &Test{
		cfg:       cfg,
		tw:        &twiliosim.Twilio{PublicBaseURL: cfg.PublicBaseURL, Target: cfg.Target, AuthToken: cfg.AuthToken, AccountSID: cfg.AccountSID, HTTP: cfg.HTTP},
		latencies: map[string][]time.Duration{},
		errKinds:  map[string]int{},
		expected:  map[string]int{},
	}
	if cfg.Streams {
		t.audio = democall.Generate()
	}
	return t, nil
}

// Progress returns the counters now; safe while Run runs.
func (t *Test) Progress() Progress {
	p := Progress{
		Calls: t.cfg.Calls, Started: int(t.started.Load()), Done: int(t.done.Load()), Failed: int(t.failed.Load()),
		InFlight: int(t.inFlight.Load()), Holds: int(t.holds.Load()), Errors: int(t.errs.Load()),
	}
	t.mu.Lock()
	if !t.began.IsZero() {
		p.Elapsed = time.Since(t.began)
	}
	t.mu.Unlock()
	return p
}

// Run plays every call and returns the report. Canceling ctx stops starting
// calls and cuts those in flight short (counted as errors).
func (t *Test) Run(ctx context.Context) *Report {
	var limiter *rate.Limiter
	if t.cfg.Rate > 0 {
		limiter = rate.NewLimiter(rate.Limit(t.cfg.Rate), 1)
	}
	mix := rand.New(rand.NewPCG(t.cfg.Seed, t.cfg.Seed>>3))
	dup := make([]bool, t.cfg.Calls)
	for i := range dup {
		dup[i] = mix.Float64() < t.cfg.Duplicates
	}

	t.mu.Lock()
	t.began = time.Now()
	t.mu.Unlock()
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(t.cfg.Concurrency, t.cfg.Calls) {
		wg.Go(func() {
			for i := range next {
				t.call(ctx, i, dup[i])
			}
		})
	}
feed:
	for i := range t.cfg.Calls {
		if limiter != nil && limiter.Wait(ctx) != nil {
			break
		}
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(t.began)
	return t.report(elapsed)
}

// scenario is one kind of caller. Each answer is posted to the Gather the
// previous document asked with; the last one must end the call.
type scenario struct {
	name    string
	answers []url.Values
	// hangsUp: no answer at all, the caller hangs up during the disclosure.
	hangsUp bool
	outcome string
	// spoken: the answer is speech, so a partial result comes before it.
	spoken bool
}

// The mix, played in turn: call i is scenarios[i%len].
var scenarios = []scenario{
	{name: "speech agree", answers: []url.Values{{"SpeechResult": {"yes I agree"}, "Confidence": {"0.93"}}}, outcome: Granted, spoken: true},
	{name: "key 1", answers: []url.Values{{"Digits": {"1"}}}, outcome: Granted},
	{name: "speech decline", answers: []url.Values{{"SpeechResult": {"no I do not agree"}, "Confidence": {"0.91"}}}, outcome: Declined, spoken: true},
	{name: "silence, then key 1", answers: []url.Values{{}, {"Digits": {"1"}}}, outcome: Granted},
	{name: "key 2", answers: []url.Values{{"Digits": {"2"}}}, outcome: Declined},
	{name: "unclear, then speech agree", answers: []url.Values{{"SpeechResult": {"what was that"}, "Confidence": {"0.88"}}, {"SpeechResult": {"yes I agree"}, "Confidence": {"0.9"}}}, outcome: Granted, spoken: true},
	{name: "speech without confidence, confirmed with key 1", answers: []url.Values{{"SpeechResult": {"yes I agree"}}, {"Digits": {"1"}}}, outcome: Granted, spoken: true},
	{name: "hangs up during the disclosure", hangsUp: true, outcome: NoResponse},
}

// callError is a failed step of one call; kind is what the report counts.
type callError struct {
	kind string
	err  error
}

func (e *callError) Error() string { return e.err.Error() }

func fail(kind string, format string, args ...any) error {
	return &callError{kind: kind, err: fmt.Errorf(format, args...)}
}

// call plays call i to its end and records what happened.
func (t *Test) call(ctx context.Context, i int, duplicate bool) {
	t.started.Add(1)
	inFlight := t.inFlight.Add(1)
	defer t.inFlight.Add(-1)
	defer t.done.Add(1)

	sc := scenarios[i%len(scenarios)]
	c := &twiliosim.Call{Twilio: t.tw, SID: "CA" + randomHex(16), From: fmt.Sprintf("+1415555%04d", i%10000), To: "+18005550199"}
	t.mu.Lock()
	t.all = append(t.all, c.SID)
	t.peakInFlight = max(t.peakInFlight, int(inFlight))
	t.mu.Unlock()

	began := time.Now()
	err := t.play(ctx, c, sc, duplicate)
	// Twilio sends the status callback however the call went, so no call is
	// left for the instance's sweep to ask Twilio about.
	secs := int(time.Since(began).Seconds())
	if serr := t.status(context.WithoutCancel(ctx), c, secs); err == nil {
		err = serr
	}
	if err != nil {
		t.failed.Add(1)
		t.noteError(err)
		return
	}
	t.mu.Lock()
	t.expected[sc.outcome]++
	t.clean = append(t.clean, c.SID)
	t.mu.Unlock()
}

func (t *Test) play(ctx context.Context, c *twiliosim.Call, sc scenario, duplicate bool) error {
	resp, err := t.twiml(ctx, c, t.cfg.PublicBaseURL+ivr.PathIncoming, url.Values{"CallStatus": {"ringing"}})
	if err != nil {
		return err
	}
	t0 := time.Now()
	var played chan error
	if t.cfg.Streams {
		stream, ok := resp.Find("Stream")
		if !ok {
			return fail("twiml", "the incoming TwiML starts no media stream (is the instance's MEDIA_STREAMS off? run without --streams)")
		}
		stopMS := streamStopMS
		if sc.hangsUp {
			stopMS = hangUpMS
		}
		played = make(chan error, 1)
		go func() { played <- t.stream(ctx, c, stream, stopMS) }()
	}
	waitStream := func() error {
		if played == nil {
			return nil
		}
		err := <-played
		played = nil
		return err
	}
	defer waitStream() // on an early return, the stream still ends before the status callback

	if sc.hangsUp {
		return waitStream()
	}
	// The must-hear part has played: Twilio follows the <Redirect> after it.
	if redirect, ok := lastRedirect(resp); ok {
		if t.cfg.Streams && !sleepUntil(ctx, t0.Add(mustHearMS*time.Millisecond)) {
			return fail("canceled", "canceled")
		}
		if resp, err = t.twiml(ctx, c, redirect, nil); err != nil {
			return err
		}
	}
	gather, ok := resp.SpeechGather()
	if !ok {
		return fail("twiml", "no speech <Gather> after the disclosure")
	}
	if t.cfg.Streams {
		// The caller's answer is in the stream's audio; the Gather's result
		// comes once it has been said, as in the demo.
		if !sleepUntil(ctx, t0.Add(time.Duration(t.audio.CallerOnsetMS+400)*time.Millisecond)) {
			return fail("canceled", "canceled")
		}
	}
	for k, answer := range sc.answers {
		if sc.spoken && answer.Has("SpeechResult") {
			if err := t.partial(ctx, c, gather, answer.Get("SpeechResult")); err != nil {
				return err
			}
		}
		last := k == len(sc.answers)-1
		if last {
			if err := waitStream(); err != nil {
				return err
			}
		}
		if resp, err = t.answer(ctx, c, gather, answer, last && duplicate); err != nil {
			return err
		}
		if last {
			if !resp.HangsUp() {
				return fail("twiml", "%s: the last answer was not read back (no <Hangup>)", sc.name)
			}
			break
		}
		if gather, ok = resp.Find("Gather"); !ok {
			return fail("twiml", "%s: answer %d drew no re-prompt or confirmation <Gather>", sc.name, k+1)
		}
	}
	return waitStream()
}

// answer posts one answer to gather's action. A hold line is followed as
// Twilio does (after its pause, the redirect to /voice/resume, which asks
// again) and the answer given again. With duplicate, the answer is
// delivered twice at once, and both deliveries must be read back alike.
func (t *Test) answer(ctx context.Context, c *twiliosim.Call, gather twiliosim.Verb, answer url.Values, duplicate bool) (*twiliosim.Response, error) {
	for holds := 0; ; holds++ {
		action := gather.Attr("action")
		if action == "" {
			return nil, fail("twiml", "a <Gather> without an action")
		}
		var resp *twiliosim.Response
		var err error
		if duplicate {
			t.duplicates.Add(1)
			var other *twiliosim.Response
			var otherErr error
			done := make(chan struct{})
			go func() {
				defer close(done)
				other, otherErr = t.twiml(ctx, c, action, answer)
			}()
			resp, err = t.twiml(ctx, c, action, answer)
			<-done
			if err == nil && otherErr != nil {
				err = otherErr
			}
			if err == nil && isHold(resp) != isHold(other) {
				// One delivery held, the other decided: the held one's
				// caller is gone (Twilio keeps the answer it used). Carry
				// on with the decided one.
				if isHold(resp) {
					resp = other
				}
				t.holds.Add(1)
			}
			duplicate = false // a retry after a hold is a new delivery
		} else {
			resp, err = t.twiml(ctx, c, action, answer)
		}
		if err != nil {
			return nil, err
		}
		redirect, held := holdRedirect(resp)
		if !held {
			return resp, nil
		}
		t.holds.Add(1)
		if holds >= maxHolds {
			return nil, fail("holds", "held %d times in a row", holds+1)
		}
		if !sleepUntil(ctx, time.Now().Add(holdPause)) {
			return nil, fail("canceled", "canceled")
		}
		if resp, err = t.twiml(ctx, c, redirect, nil); err != nil {
			return nil, err
		}
		var ok bool
		if gather, ok = resp.Find("Gather"); !ok {
			return nil, fail("twiml", "the redirect after a hold asked nothing")
		}
	}
}

// partial posts a partial speech result, as Twilio's partialResultCallback.
func (t *Test) partial(ctx context.Context, c *twiliosim.Call, gather twiliosim.Verb, speech string) error {
	u := gather.Attr("partialResultCallback")
	if u == "" {
		return nil
	}
	words := strings.Fields(speech)
	_, err := t.post(ctx, c, u, url.Values{"UnstableSpeechResult": {words[0]}, "Stability": {"0.4"}, "SequenceNumber": {"1"}})
	return err
}

// status posts the status callback of the ended call.
func (t *Test) status(ctx context.Context, c *twiliosim.Call, secs int) error {
	_, err := t.post(ctx, c, t.cfg.PublicBaseURL+ivr.PathStatus, url.Values{"CallStatus": {"completed"}, "CallDuration": {fmt.Sprint(secs)}})
	return err
}

// stream plays the call's media stream at real time until stopMS.
func (t *Test) stream(ctx context.Context, c *twiliosim.Call, v twiliosim.Verb, stopMS int) error {
	params := map[string]string{}
	for _, p := range v.Children {
		if p.Name == "Parameter" {
			params[p.Attr("name")] = p.Attr("value")
		}
	}
	res, err := t.tw.Stream(ctx, v.Attr("url"), twiliosim.StreamPlay{
		CallSID: c.SID, CustomParameters: params, Inbound: t.audio.Inbound, Outbound: t.audio.Outbound,
		Realtime: true, StopAfter: stopMS / 20,
	})
	if err != nil {
		return fail("stream", "media stream: %w", err)
	}
	t.observe(RouteStreamUpgrade, res.Upgrade)
	return nil
}

// twiml posts a webhook with the call's parameters plus extra and parses
// the TwiML it answers.
func (t *Test) twiml(ctx context.Context, c *twiliosim.Call, fullURL string, extra url.Values) (*twiliosim.Response, error) {
	body, err := t.post(ctx, c, fullURL, extra)
	if err != nil {
		return nil, err
	}
	resp, err := twiliosim.ParseResponse(body)
	if err != nil {
		return nil, fail("twiml", "%s: %w", routeOf(fullURL), err)
	}
	return resp, nil
}

// post signs and posts one webhook and times it under its route; anything
// but a 2xx answer is an error.
func (t *Test) post(ctx context.Context, c *twiliosim.Call, fullURL string, extra url.Values) ([]byte, error) {
	route := routeOf(fullURL)
	began := time.Now()
	status, body, err := t.tw.Post(ctx, fullURL, c.Params(extra))
	took := time.Since(began)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fail("canceled", "canceled")
		}
		return nil, fail("transport", "POST %s: %v", route, err)
	}
	t.observe(route, took)
	if status < 200 || status > 299 {
		return nil, fail(fmt.Sprintf("status %d", status), "POST %s: status %d", route, status)
	}
	return body, nil
}

func (t *Test) observe(route string, d time.Duration) {
	t.mu.Lock()
	t.latencies[route] = append(t.latencies[route], d)
	t.mu.Unlock()
}

func (t *Test) noteError(err error) {
	t.errs.Add(1)
	kind := "other"
	var ce *callError
	if errors.As(err, &ce) {
		kind = ce.kind
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.errKinds[kind]++
	if msg := err.Error(); len(t.samples) < maxSamples && !slices.Contains(t.samples, msg) {
		t.samples = append(t.samples, msg)
	}
}

// maxSamples is how many different error messages the report quotes.
const maxSamples = 5

// routeOf is the route a URL is reported under: its path (the query holds
// the call's flow state, not a route).
func routeOf(fullURL string) string {
	u, err := url.Parse(fullURL)
	if err != nil {
		return "unparsable URL"
	}
	return u.Path
}

// lastRedirect returns the URL of a <Redirect> ending the document.
func lastRedirect(r *twiliosim.Response) (string, bool) {
	if n := len(r.Verbs); n > 0 && r.Verbs[n-1].Name == "Redirect" {
		return r.Verbs[n-1].Text, true
	}
	return "", false
}

// holdRedirect returns the redirect of a hold answer: a document ending
// in a <Redirect> to /voice/resume.
func holdRedirect(r *twiliosim.Response) (string, bool) {
	u, ok := lastRedirect(r)
	if !ok || routeOf(u) != ivr.PathResume {
		return "", false
	}
	return u, true
}

func isHold(r *twiliosim.Response) bool {
	_, ok := holdRedirect(r)
	return ok
}

// sleepUntil waits until at, or returns false when ctx ends first.
func sleepUntil(ctx context.Context, at time.Time) bool {
	d := time.Until(at)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = crand.Read(b) // never fails (Go 1.24+)
	return hex.EncodeToString(b)
}

// sortDurations sorts in place and returns d.
func sortDurations(d []time.Duration) []time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d
}
