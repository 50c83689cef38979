package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/riverqueue/river"

	"github.com/consentline/consentline/internal/groupcommit"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/relay/relaydriver"
)

// Config configures a Relay. Keyring is required; WebhookURL and Signer
// together turn Zapier delivery on.
type Config struct {
	Keyring *pii.Keyring
	// Pseudonymizer makes call.completed's patient_ref
	// (pii.LoadPseudonymizer).
	Pseudonymizer *pii.Pseudonymizer
	PII           PIIMode // default PIIEncrypted

	WebhookURL string  // ZAPIER_WEBHOOK_URL; empty: no delivery, audit only
	Signer     *Signer // from RELAY_SIGNING_SECRET; required with WebhookURL

	HTTPClient     *http.Client  // default: no redirects, per-attempt timeout
	AttemptTimeout time.Duration // default DefaultAttemptTimeout
	// Backoff sets the retry delays (zero value: DefaultBackoff). The
	// attempt budget is fixed at insert time by MaxDeliveryAttempts, which
	// is DefaultBackoff's.
	Backoff Backoff
	// Workers is how many deliveries run at once (default DefaultWorkers).
	Workers int
	// RateLimit paces deliveries to the hook, in requests per second
	// (RELAY_RATE_LIMIT; 0: DefaultRateLimit): a burst of events queues
	// instead of drawing a storm of 429s. See pacer.
	RateLimit float64
	// PollInterval is how often River looks for due jobs besides being
	// woken by inserts (default: River's, 1 s).
	PollInterval time.Duration
	// RescueAfter is how long a delivery may stay running before River
	// takes it for abandoned (its process was killed, or hung) and runs it
	// again (default DefaultRescueAfter(AttemptTimeout): 30 s). It must be
	// longer than the job timeout, AttemptTimeout + 5 s. Deliveries are
	// at-least-once with a stable webhook-id, so a rescue that races a slow
	// but live attempt costs at most a duplicate the receiver drops.
	RescueAfter time.Duration

	// Now is the relay's clock (default time.Now): webhook-timestamp,
	// retry times. Tests inject a clock; River then runs on it as well
	// (through river.Config.Test.Time), held to no earlier than the real
	// time because the outbox inserts jobs on the database's clock.
	Now    func() time.Time
	Logger *slog.Logger // default: discard
	// Metrics, when set, counts delivery attempts, dead letters, delivery
	// lag, call.completed commits and audit checkpoints (nil: none). Serve
	// also points its queue depth gauge at QueueDepth.
	Metrics *telemetry.Metrics
}

// DefaultWorkers is how many deliveries run at once by default. Deliveries
// wait on the network, not the CPU; with River fetching at most every
// fetchCooldown, Workers/fetchCooldown also bounds the delivery rate (16 per
// 10 ms).
const DefaultWorkers = 16

// fetchCooldown is the shortest time between two River fetches of due jobs
// (River's default is 100 ms, which at 4 workers capped delivery at 40
// events/s and added up to 100 ms to every delivery).
const fetchCooldown = 10 * time.Millisecond

// jobTimeoutMargin is how much longer than the HTTP attempt River's job
// context lives (see deliverWorker.Timeout).
const jobTimeoutMargin = 5 * time.Second

// JobTimeout is how long River lets one delivery run for a per-attempt
// timeout (zero: DefaultAttemptTimeout): a little longer than the attempt,
// so the attempt's own timeout, with its clear error, fires first.
// RescueAfter must be longer.
func JobTimeout(attemptTimeout time.Duration) time.Duration {
	if attemptTimeout <= 0 {
		attemptTimeout = DefaultAttemptTimeout
	}
	return attemptTimeout + jobTimeoutMargin
}

// DefaultRescueAfter is RescueAfter's default for a per-attempt timeout
// (zero: DefaultAttemptTimeout): twice the job timeout, so 30 s for 10 s
// attempts. River's own default is an hour, which would leave a delivery
// cut off by a crash or a redeploy's SIGKILL waiting that long.
func DefaultRescueAfter(attemptTimeout time.Duration) time.Duration {
	return 2 * JobTimeout(attemptTimeout)
}

// Relay delivers audited events to Zapier and answers the operator commands
// (list failed, replay, verify, decrypt) for one database.
type Relay struct {
	cfg           Config
	clockInjected bool // cfg.Now came from the caller: River runs on it too
	b             backend
	calls         *groupcommit.Committer[Event, bool] // RecordCallCompleted's batches
	zapier        *Zapier
	pace          *pacer
	backoff       Backoff
	log           *slog.Logger
}

// New returns a Relay on the database driver d (relaypg.New(pool),
// relaysqlite.New(db)): the River client it delivers with is built on d's
// River driver, and only that one.
func New[Tx any](d relaydriver.Driver[Tx], cfg Config) (*Relay, error) {
	r, err := newRelay(cfg)
	if err != nil {
		return nil, err
	}
	client, err := river.NewClient(d.River(), r.riverConfig())
	if err != nil {
		return nil, fmt.Errorf("relay: river client: %w", err)
	}
	// RecordCallCompleted's own transactions write through the same outbox
	// writer as the stores' (relay events have one write path).
	ob, err := NewOutbox(d, cfg.Keyring, r.Delivering())
	if err != nil {
		return nil, err
	}
	r.b = &driverBackend[Tx]{d: d, client: client, outbox: ob}
	r.newCallBatcher()
	return r, nil
}

func newRelay(cfg Config) (*Relay, error) {
	if cfg.Keyring == nil {
		return nil, errors.New("relay: Config.Keyring is required")
	}
	// The same check as the settings loader's, and the parsed value is
	// kept, so "" becomes the default and a mode is never compared raw.
	mode, err := ParsePIIMode(string(cfg.PII))
	if err != nil {
		return nil, err
	}
	cfg.PII = mode
	if cfg.WebhookURL != "" && cfg.Signer == nil {
		return nil, errNoSigningSecret
	}
	clockInjected := cfg.Now != nil
	if !clockInjected {
		cfg.Now = time.Now
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = DefaultAttemptTimeout
	}
	if cfg.RateLimit < 0 || cfg.RateLimit > MaxRateLimit {
		return nil, fmt.Errorf("relay: RateLimit %g is outside (0, %d] requests per second", cfg.RateLimit, MaxRateLimit)
	}
	if cfg.RescueAfter == 0 {
		cfg.RescueAfter = DefaultRescueAfter(cfg.AttemptTimeout)
	}
	if jt := JobTimeout(cfg.AttemptTimeout); cfg.RescueAfter <= jt {
		return nil, fmt.Errorf("relay: RescueAfter (%s) must be longer than a delivery's job timeout (%s: the %s attempt timeout + %s)",
			cfg.RescueAfter, jt, cfg.AttemptTimeout, jobTimeoutMargin)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	b := cfg.Backoff
	if b.Base == 0 {
		b = DefaultBackoff()
	}
	if b.Now == nil {
		b.Now = cfg.Now
	}
	client := cfg.HTTPClient
	return &Relay{
		cfg:           cfg,
		clockInjected: clockInjected,
		zapier:        &Zapier{URL: cfg.WebhookURL, Signer: cfg.Signer, Client: client, Timeout: cfg.AttemptTimeout, Now: cfg.Now},
		pace:          newPacer(cfg.RateLimit),
		backoff:       b,
		log:           log,
	}, nil
}

func (r *Relay) riverConfig() *river.Config {
	workers := river.NewWorkers()
	river.AddWorker(workers, &deliverWorker{r: r})
	c := &river.Config{
		Queues:      map[string]river.QueueConfig{QueueName: {MaxWorkers: r.cfg.Workers}},
		Workers:     workers,
		Logger:      r.log,
		MaxAttempts: MaxDeliveryAttempts(),
		// Dead letters and exhausted jobs stay until an operator acts on
		// them (River would drop cancelled jobs after a day); they hold an
		// event id and a status line, no PHI. Completed jobs are delivery
		// history for `relay` commands, kept a month.
		CancelledJobRetentionPeriod: -1,
		DiscardedJobRetentionPeriod: -1,
		CompletedJobRetentionPeriod: 30 * 24 * time.Hour,
		FetchCooldown:               fetchCooldown,
		// A job left running by a killed process is retried once it has
		// been running RescueAfter; River requires that to exceed the job
		// timeout, whose client-wide default (1 min) is set to ours.
		JobTimeout:           JobTimeout(r.cfg.AttemptTimeout),
		RescueStuckJobsAfter: r.cfg.RescueAfter,
	}
	if r.cfg.PollInterval > 0 {
		c.FetchPollInterval = r.cfg.PollInterval
		c.FetchCooldown = min(r.cfg.PollInterval, fetchCooldown)
	}
	if r.clockInjected {
		c.Test.Time = riverClock{r.cfg.Now}
	}
	return c
}

// riverClock runs River on an injected clock (a test's), never behind the
// real one: jobs are inserted with the database's now(), and River would
// not fetch them while its clock was earlier.
type riverClock struct{ now func() time.Time }

func (c riverClock) Now() time.Time {
	t, wall := c.now(), time.Now()
	if t.After(wall) {
		return t
	}
	return wall
}

func (c riverClock) NowOrNil() *time.Time {
	t := c.Now()
	return &t
}

// Delivering reports whether Zapier delivery is configured.
func (r *Relay) Delivering() bool { return r.cfg.WebhookURL != "" }

// Start starts the delivery workers. With no ZAPIER_WEBHOOK_URL it does
// nothing: jobs (from a time it was set) wait rather than fail.
func (r *Relay) Start(ctx context.Context) error {
	if !r.Delivering() {
		r.log.InfoContext(ctx, "relay: ZAPIER_WEBHOOK_URL not set; events are audited, not delivered")
		return nil
	}
	return r.b.start(ctx)
}

// HandBackMargin is how long before Stop's deadline the deliveries still
// running are cut off and handed back to the queue.
const HandBackMargin = time.Second

// Stop stops fetching deliveries and lets the running ones finish until
// HandBackMargin before ctx's deadline (or ctx's end, with no deadline);
// then it cancels those still running, which hand their jobs back to the
// queue (a snooze of 0: available at once to any instance, the cut-off
// attempt not counted; a receiver that got the request anyway sees it
// again with the same webhook-id), and waits for that until ctx ends.
func (r *Relay) Stop(ctx context.Context) error {
	if !r.Delivering() {
		return nil
	}
	soft := ctx
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		soft, cancel = context.WithDeadline(ctx, dl.Add(-HandBackMargin))
		defer cancel()
	}
	if err := r.b.stop(soft); err == nil {
		return nil
	}
	// Out of time (River's Stop returns only ctx's error): cancel the
	// running deliveries, even when ctx is already done and there is no
	// waiting for them.
	if err := r.b.stopAndCancel(ctx); err != nil {
		return fmt.Errorf("relay: deliveries still running at shutdown: %w", err)
	}
	return nil
}

// RecordCallCompleted audits the call.completed event for a finished call
// and queues its delivery, in one transaction. A repeated status callback
// for the same call finds the event already there and changes nothing
// (created false).
//
// Status callbacks arriving together share that transaction (group commit,
// internal/groupcommit): one commit, one lock per audit chain, one River
// insert for all of them. They are batched among themselves, not with
// consent records, which the store commits; the two kinds of transaction
// take the chain locks in the same order, so they cannot deadlock.
func (r *Relay) RecordCallCompleted(ctx context.Context, c CallCompleted) (ev Event, created bool, err error) {
	if r.cfg.Pseudonymizer == nil {
		return Event{}, false, errors.New("relay: Config.Pseudonymizer is required for call.completed")
	}
	ev, err = NewCallCompletedEvent(c, r.cfg.Keyring, r.cfg.Pseudonymizer)
	if err != nil {
		return Event{}, false, err
	}
	created, err = r.calls.Do(ctx, ev)
	return ev, created, err
}

// batchGrace is how long a caller whose context ended while its batch was
// committing waits for the outcome (pgstore's cancel grace: the time the
// server gets to acknowledge a canceled statement).
const batchGrace = 500 * time.Millisecond

// newCallBatcher is RecordCallCompleted's group committer over r.b.
func (r *Relay) newCallBatcher() {
	r.calls = groupcommit.New(func(ctx context.Context, evs []Event) ([]groupcommit.Result[bool], error) {
		created, err := r.b.record(ctx, evs)
		if err != nil {
			return nil, err
		}
		res := make([]groupcommit.Result[bool], len(evs))
		for i, c := range created {
			res[i].Val = c
		}
		return res, nil
	}, groupcommit.Options{Grace: batchGrace, Observe: func(items int, took time.Duration, err error) {
		r.cfg.Metrics.StoreCommit(telemetry.CommitCallCompleted, items, took, err)
	}})
}
