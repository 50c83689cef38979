// Package telemetry is what an operator sees of a running ConsentLine:
// its Prometheus metrics (Metrics, served by Handler at /metrics) and its
// access log (AccessLog, Recoverer, NoteCallSID).
//
// Metrics owns its own prometheus.Registry rather than the global default:
// tests build several servers in one process, each with its metrics. It is
// handed explicitly to every part that records (ivr.Config, consent.Config,
// the stores' Options, relay.Config), and every recording method is safe on
// a nil *Metrics, so a test that does not look at metrics passes none.
//
// No label carries a call SID, a phone number or a transcript: every label
// value comes from a small fixed set, and a value outside its set is
// recorded as "other" (see label), so not even a future caller's mistake
// can put PHI into a metric.
package telemetry

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// namespace prefixes every ConsentLine metric.
const namespace = "consentline"

// Answer kinds: what a webhook's TwiML does for the caller.
const (
	AnswerTwiML    = "twiml"     // the greeting and disclosure, a language switch
	AnswerHold     = "hold"      // the hold line and a redirect back (a backend failed or the instance is full)
	AnswerReadBack = "read_back" // the decision read back, the call ends
	AnswerReprompt = "reprompt"  // the question again (an unclear answer, or back from a hold)
	AnswerConfirm  = "confirm"   // speech without a confidence: confirm with a key
)

// Hold causes.
const (
	HoldOverloaded   = "overloaded"    // admission control refused the work
	HoldPastDeadline = "past_deadline" // the work had not finished when the webhook had to be answered
	HoldError        = "error"         // a backend answered with an error
)

// Commit queues: the group committers whose transactions are measured.
const (
	CommitRecords       = "consent_records" // consent records, their audit entries and delivery jobs
	CommitCallCompleted = "call_completed"  // call.completed events from status callbacks
)

// Relay attempt outcomes (relay.DeliveryOutcome's names) and dead-letter
// reasons.
const (
	DeliveryDelivered = "delivered"
	DeliveryRetry     = "retry"
	DeliveryDead      = "dead"

	DeadRejected  = "rejected"  // the hook answered a 4xx other than 408/429
	DeadExhausted = "exhausted" // retryable failures until the attempts ran out
	DeadInvalid   = "invalid"   // the event could not be loaded or encoded
)

// Media stream labels (the mediastream package records these).
const (
	StreamRefusedSignature = "bad_signature" // the upgrade's X-Twilio-Signature was missing or wrong
	StreamRefusedCapacity  = "over_capacity" // the instance already runs as many streams as it may
	StreamRefusedRequest   = "bad_request"   // not a websocket upgrade, or its start message was malformed

	StreamErrorProtocol   = "protocol"   // a message that is not Twilio's Media Streams protocol
	StreamErrorAudio      = "audio"      // media that does not decode
	StreamErrorRecognizer = "recognizer" // the speech recognizer failed for the stream
	StreamErrorTimeout    = "timeout"    // no message within the stream's idle timeout
	StreamErrorWrite      = "write"      // a message to Twilio could not be sent
	StreamErrorTwilio     = "twilio"     // Twilio reported the stream failed (its stream-error status callback)

	TrackInbound  = "inbound"  // the caller
	TrackOutbound = "outbound" // what ConsentLine plays
)

// Label sets: every label value must be one of these.
var (
	answerKinds   = set(AnswerTwiML, AnswerHold, AnswerReadBack, AnswerReprompt, AnswerConfirm)
	holdCauses    = set(HoldOverloaded, HoldPastDeadline, HoldError)
	outcomes      = set("granted", "declined", "no_response", "revoked")
	sources       = set("speech", "dtmf", "media_stream", "status_callback")
	timings       = set("measured", "estimated")
	commitQueues  = set(CommitRecords, CommitCallCompleted)
	deliveries    = set(DeliveryDelivered, DeliveryRetry, DeliveryDead)
	deadReasons   = set(DeadRejected, DeadExhausted, DeadInvalid)
	streamRefusal = set(StreamRefusedSignature, StreamRefusedCapacity, StreamRefusedRequest)
	streamErrors  = set(StreamErrorProtocol, StreamErrorAudio, StreamErrorRecognizer, StreamErrorTimeout, StreamErrorWrite, StreamErrorTwilio)
	tracks        = set(TrackInbound, TrackOutbound)
	// QueueStates are the River job states counted as the relay's queue.
	queueStates = set("available", "pending", "retryable", "running", "scheduled")
)

func set(vs ...string) map[string]bool {
	m := make(map[string]bool, len(vs))
	for _, v := range vs {
		m[v] = true
	}
	return m
}

// other is recorded in place of a label value outside its set.
const other = "other"

// label returns v when it is in allowed, else "other".
func label(allowed map[string]bool, v string) string {
	if allowed[v] {
		return v
	}
	return other
}

// Buckets. Webhooks must answer well inside 2 s (CONTRACT.md §1), so the
// latency buckets are dense below it.
var (
	webhookBuckets = []float64{.005, .01, .025, .05, .075, .1, .25, .5, .75, 1, 1.5, 2, 5}
	waitBuckets    = []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2}
	commitBuckets  = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	batchBuckets   = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}
	// Delivery lag spans an instant delivery and a day of retries.
	lagBuckets = []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 6 * 3600, 24 * 3600}
)

// Metrics are ConsentLine's collectors, registered in a registry of their
// own. The zero value is not usable; build one with New. A nil *Metrics
// records nothing.
type Metrics struct {
	reg *prometheus.Registry
	// collectors are every collector in reg, for Descriptors.
	collectors []prometheus.Collector

	httpDuration *prometheus.HistogramVec

	answers        *prometheus.CounterVec
	holds          *prometheus.CounterVec
	statusRefused  prometheus.Counter
	decisions      *prometheus.CounterVec
	conflicts      prometheus.Counter
	lockBusy       prometheus.Counter
	lockWait       prometheus.Histogram
	admitRefused   prometheus.Counter
	commitDuration *prometheus.HistogramVec
	commitBatch    *prometheus.HistogramVec
	commitFailures *prometheus.CounterVec

	relayAttempts   *prometheus.CounterVec
	relayDead       *prometheus.CounterVec
	relayLag        prometheus.Histogram
	queueErrors     prometheus.Counter
	checkpoints     prometheus.Counter
	checkpointFails prometheus.Counter

	streamsActive     prometheus.Gauge
	streamsRefused    *prometheus.CounterVec
	streamErrors      *prometheus.CounterVec
	vadOnsets         *prometheus.CounterVec
	recognizerRetries prometheus.Counter
	recognizerFails   prometheus.Counter

	// Read on scrape from whoever owns the numbers.
	gauges *scraped
}

// New returns Metrics with every ConsentLine collector, and Go's runtime
// and process collectors, registered.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := factory{m}

	m.httpDuration = f.histogramVec("http_request_duration_seconds",
		"Time to answer an HTTP request, by route pattern (never the raw URL) and status code.", webhookBuckets, "route", "status")

	m.answers = f.counterVec("ivr_answers_total",
		"Webhooks answered with TwiML, by what the TwiML does: twiml (greeting, disclosure, language switch), hold, read_back, reprompt (an unclear answer, or back from a hold), confirm.", "kind")
	m.holds = f.counterVec("ivr_holds_total",
		"Webhooks answered with the hold line, by cause: overloaded (admission refused the work), past_deadline (the work outran the answer deadline), error (a backend failed).", "cause")
	m.statusRefused = f.counter("ivr_status_callbacks_refused_total",
		"Status callbacks answered 503 because they could not be recorded; the sweep closes those calls later.")
	m.decisions = f.counterVec("decisions_total",
		"Consent decisions recorded (created, not read back), by outcome, source and timing.", "outcome", "source", "timing")
	m.conflicts = f.counter("decision_conflicts_total",
		"Clear answers that found a decision already stored for their call and script: duplicates (Twilio's retries, a load balancer's copies) that the lock or the unique constraint kept from a second record.")
	m.lockBusy = f.counter("lock_busy_total",
		"Deliveries that found their call's lock held by another delivery (another instance, or a retry) and waited for its decision.")
	m.lockWait = f.histogram("lock_wait_seconds",
		"Time a delivery waited for another delivery of the same call to release the call's lock.", waitBuckets)
	m.admitRefused = f.counter("admission_refused_total",
		"Decision work refused by admission control (no slot within the admit wait); the caller heard the hold line.")
	m.commitDuration = f.histogramVec("store_commit_duration_seconds",
		"Time of one group-commit transaction, by queue (consent_records, call_completed).", commitBuckets, "queue")
	m.commitBatch = f.histogramVec("store_commit_batch_size",
		"Items committed together in one group-commit transaction, by queue.", batchBuckets, "queue")
	m.commitFailures = f.counterVec("store_commit_failures_total",
		"Group-commit transactions that failed (rolled back), by queue.", "queue")

	m.relayAttempts = f.counterVec("relay_attempts_total",
		"Delivery attempts to the Zapier catch hook, by outcome: delivered (2xx), retry (5xx, 408, 429, timeout, unreachable), dead (other 4xx).", "outcome")
	m.relayDead = f.counterVec("relay_dead_letters_total",
		"Deliveries given up on, by reason: rejected (a 4xx), exhausted (out of attempts), invalid (the event could not be loaded or encoded).", "reason")
	m.relayLag = f.histogram("relay_delivery_lag_seconds",
		"Time from an event's delivery being queued to the catch hook accepting it, retries included.", lagBuckets)
	m.queueErrors = f.counter("relay_queue_depth_errors_total",
		"Scrapes on which the relay's queue depth could not be read.")
	m.checkpoints = f.counter("audit_checkpoints_written_total",
		"Signed audit checkpoints (chain heads) written.")
	m.checkpointFails = f.counter("audit_checkpoint_failures_total",
		"Audit chains whose head could not be checked or signed on a checkpoint pass.")

	m.streamsActive = f.gauge("media_streams_active",
		"Media Streams websockets open now.")
	m.streamsRefused = f.counterVec("media_streams_refused_total",
		"Media Streams websocket upgrades refused, by reason: bad_signature, over_capacity, bad_request.", "reason")
	m.streamErrors = f.counterVec("media_stream_errors_total",
		"Media streams ended or degraded by an error, by reason: protocol, audio, recognizer, timeout, write.", "reason")
	m.vadOnsets = f.counterVec("vad_onsets_total",
		"Speech onsets the voice activity detector found, by track: inbound (the caller), outbound (ConsentLine's own audio).", "track")
	m.recognizerRetries = f.counter("recognizer_reconnects_total",
		"Times a stream's speech recognizer connection was re-established.")
	m.recognizerFails = f.counter("recognizer_failures_total",
		"Stream speech recognizer connections that failed and were not recovered.")

	m.gauges = newScraped()
	f.register(m.gauges)
	f.register(collectors.NewGoCollector())
	f.register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Descriptors describes every metric m can expose, whether or not it has a
// series yet (a vector gets its first when its first event happens): what
// the dashboard test checks the dashboard's queries against.
func (m *Metrics) Descriptors() []*prometheus.Desc {
	ch := make(chan *prometheus.Desc)
	go func() {
		for _, c := range m.collectors {
			c.Describe(ch)
		}
		close(ch)
	}()
	var out []*prometheus.Desc
	for d := range ch {
		out = append(out, d)
	}
	return out
}

// Registry is the registry the metrics are in (for Handler and tests).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

type factory struct{ m *Metrics }

func (f factory) register(c prometheus.Collector) {
	f.m.reg.MustRegister(c)
	f.m.collectors = append(f.m.collectors, c)
}

func (f factory) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help})
	f.register(c)
	return c
}

func (f factory) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	f.register(c)
	return c
}

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
	f.register(g)
	return g
}

func (f factory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets})
	f.register(h)
	return h
}

func (f factory) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets}, labels)
	f.register(h)
	return h
}

// HTTPRequest records one answered HTTP request (AccessLog calls it).
func (m *Metrics) HTTPRequest(route string, status int, took time.Duration) {
	if m == nil {
		return
	}
	m.httpDuration.WithLabelValues(route, statusLabel(status)).Observe(took.Seconds())
}

// Answer counts a webhook answered with TwiML of kind (Answer*).
func (m *Metrics) Answer(kind string) {
	if m == nil {
		return
	}
	m.answers.WithLabelValues(label(answerKinds, kind)).Inc()
}

// Hold counts a webhook answered with the hold line, for cause (Hold*).
func (m *Metrics) Hold(cause string) {
	if m == nil {
		return
	}
	m.holds.WithLabelValues(label(holdCauses, cause)).Inc()
}

// StatusCallbackRefused counts a status callback answered 503.
func (m *Metrics) StatusCallbackRefused() {
	if m == nil {
		return
	}
	m.statusRefused.Inc()
}

// Decision counts a decision recorded (created) with its outcome
// (consent.Decision), source and timing.
func (m *Metrics) Decision(outcome, source, timing string) {
	if m == nil {
		return
	}
	m.decisions.WithLabelValues(label(outcomes, outcome), label(sources, source), label(timings, timing)).Inc()
}

// DecisionConflict counts a Record that found a decision already stored.
func (m *Metrics) DecisionConflict() {
	if m == nil {
		return
	}
	m.conflicts.Inc()
}

// LockBusy counts a delivery finding its call's lock taken.
func (m *Metrics) LockBusy() {
	if m == nil {
		return
	}
	m.lockBusy.Inc()
}

// LockWaited records how long a delivery waited for its call's lock.
func (m *Metrics) LockWaited(took time.Duration) {
	if m == nil {
		return
	}
	m.lockWait.Observe(took.Seconds())
}

// AdmissionRefused counts decision work refused by admission control.
func (m *Metrics) AdmissionRefused() {
	if m == nil {
		return
	}
	m.admitRefused.Inc()
}

// WatchAdmission makes the admission gauges read current on every
// scrape: the limit in force and the work in flight.
func (m *Metrics) WatchAdmission(current func() (limit, inflight int)) {
	if m == nil {
		return
	}
	m.gauges.setAdmission(current)
}

// StoreCommit records one group-commit transaction of items on queue
// (Commit*), how long it took and whether it failed. It has the shape of
// groupcommit.Options.Observe once queue is bound.
func (m *Metrics) StoreCommit(queue string, items int, took time.Duration, err error) {
	if m == nil {
		return
	}
	q := label(commitQueues, queue)
	m.commitDuration.WithLabelValues(q).Observe(took.Seconds())
	m.commitBatch.WithLabelValues(q).Observe(float64(items))
	if err != nil {
		m.commitFailures.WithLabelValues(q).Inc()
	}
}

// RelayAttempt counts one delivery attempt with its outcome (Delivery*).
func (m *Metrics) RelayAttempt(outcome string) {
	if m == nil {
		return
	}
	m.relayAttempts.WithLabelValues(label(deliveries, outcome)).Inc()
}

// RelayDelivered records the lag of a delivery the hook accepted: from
// queued to accepted.
func (m *Metrics) RelayDelivered(lag time.Duration) {
	if m == nil {
		return
	}
	m.relayLag.Observe(max(lag, 0).Seconds())
}

// RelayDeadLetter counts a delivery given up on, for reason (Dead*).
func (m *Metrics) RelayDeadLetter(reason string) {
	if m == nil {
		return
	}
	m.relayDead.WithLabelValues(label(deadReasons, reason)).Inc()
}

// WatchRelayQueue makes the queue depth gauge read depth on every scrape,
// with a short timeout: depth returns the relay's jobs per River state.
func (m *Metrics) WatchRelayQueue(depth func(ctx context.Context) (map[string]int64, error)) {
	if m == nil {
		return
	}
	m.gauges.setQueue(depth, m.queueErrors)
}

// CheckpointWritten counts a signed audit checkpoint written.
func (m *Metrics) CheckpointWritten() {
	if m == nil {
		return
	}
	m.checkpoints.Inc()
}

// CheckpointFailed counts a chain whose checkpoint pass failed.
func (m *Metrics) CheckpointFailed() {
	if m == nil {
		return
	}
	m.checkpointFails.Inc()
}

// StreamOpened and StreamClosed keep the active media streams gauge.
func (m *Metrics) StreamOpened() {
	if m == nil {
		return
	}
	m.streamsActive.Inc()
}

// StreamClosed: see StreamOpened.
func (m *Metrics) StreamClosed() {
	if m == nil {
		return
	}
	m.streamsActive.Dec()
}

// StreamRefused counts a media stream upgrade refused, for reason
// (StreamRefused*).
func (m *Metrics) StreamRefused(reason string) {
	if m == nil {
		return
	}
	m.streamsRefused.WithLabelValues(label(streamRefusal, reason)).Inc()
}

// StreamError counts a media stream error, for reason (StreamError*).
func (m *Metrics) StreamError(reason string) {
	if m == nil {
		return
	}
	m.streamErrors.WithLabelValues(label(streamErrors, reason)).Inc()
}

// VADOnset counts a speech onset on track (Track*).
func (m *Metrics) VADOnset(track string) {
	if m == nil {
		return
	}
	m.vadOnsets.WithLabelValues(label(tracks, track)).Inc()
}

// RecognizerReconnected counts a recognizer connection re-established.
func (m *Metrics) RecognizerReconnected() {
	if m == nil {
		return
	}
	m.recognizerRetries.Inc()
}

// RecognizerFailed counts a recognizer connection lost for good.
func (m *Metrics) RecognizerFailed() {
	if m == nil {
		return
	}
	m.recognizerFails.Inc()
}

// statusLabel is an HTTP status as a label: the code for the ones
// ConsentLine answers, "other" for anything else a handler might write.
func statusLabel(code int) string {
	switch code {
	case 200, 204, 400, 401, 403, 404, 405, 413, 500, 503:
		return strconv.Itoa(code)
	}
	return other
}

// scraped reads gauges from their owners on every scrape.
type scraped struct {
	admitLimit, admitInflight, queueDepth *prometheus.Desc

	mu          sync.Mutex
	admission   func() (limit, inflight int)
	queue       func(ctx context.Context) (map[string]int64, error)
	queueErrors prometheus.Counter
}

// queueTimeout bounds the queue depth query a scrape makes.
const queueTimeout = 2 * time.Second

func newScraped() *scraped {
	return &scraped{
		admitLimit: prometheus.NewDesc(namespace+"_admission_limit",
			"The admission limit in force: how much decision work this instance runs at once (adapts between its minimum and maximum).", nil, nil),
		admitInflight: prometheus.NewDesc(namespace+"_admission_in_flight",
			"Decision work running now, including work whose webhook was already answered with a hold.", nil, nil),
		queueDepth: prometheus.NewDesc(namespace+"_relay_queue_jobs",
			"Deliveries to Zapier waiting or running, by River job state (available, scheduled, retryable, running, pending); read from the database on scrape, so shared by every instance on it.", []string{"state"}, nil),
	}
}

func (s *scraped) setAdmission(f func() (int, int)) {
	s.mu.Lock()
	s.admission = f
	s.mu.Unlock()
}

func (s *scraped) setQueue(f func(context.Context) (map[string]int64, error), errs prometheus.Counter) {
	s.mu.Lock()
	s.queue, s.queueErrors = f, errs
	s.mu.Unlock()
}

func (s *scraped) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.admitLimit
	ch <- s.admitInflight
	ch <- s.queueDepth
}

func (s *scraped) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	admission, queue, errs := s.admission, s.queue, s.queueErrors
	s.mu.Unlock()
	if admission != nil {
		limit, inflight := admission()
		ch <- prometheus.MustNewConstMetric(s.admitLimit, prometheus.GaugeValue, float64(limit))
		ch <- prometheus.MustNewConstMetric(s.admitInflight, prometheus.GaugeValue, float64(inflight))
	}
	if queue != nil {
		ctx, cancel := context.WithTimeout(context.Background(), queueTimeout)
		defer cancel()
		depth, err := queue(ctx)
		if err != nil {
			errs.Inc()
			return
		}
		// Every state, zero or not, so a drained queue shows 0, not a gap.
		for st := range queueStates {
			ch <- prometheus.MustNewConstMetric(s.queueDepth, prometheus.GaugeValue, float64(depth[st]), st)
		}
	}
}
