package relay

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/pii"
)

// Outbox writes relay events inside the caller's transaction: the audit
// entry and, when Zapier delivery is on, the River delivery job. Its hooks
// have the signatures of the stores' Options.AfterInsert, so a consent
// record, its audit entry and its delivery job commit or roll back together.
//
// It needs no database handle (River inserts through the transaction it is
// given), so it can be built before the store it is passed to.
type Outbox struct {
	k       *pii.Keyring
	deliver bool
	sq      *river.Client[*sql.Tx]
	pg      *river.Client[pgx.Tx]
}

// NewOutbox returns an Outbox sealing with k. deliver says whether Zapier
// delivery is on (ZAPIER_WEBHOOK_URL set); when it is off only the audit
// entry is written.
func NewOutbox(k *pii.Keyring, deliver bool) (*Outbox, error) {
	if k == nil {
		return nil, errors.New("relay: outbox needs a keyring")
	}
	// Insert-only clients: a nil pool is River's documented way to allow
	// InsertTx and nothing else.
	sq, err := river.NewClient(riversqlite.New(nil), &river.Config{})
	if err != nil {
		return nil, err
	}
	pg, err := river.NewClient(riverpgxv5.New(nil), &river.Config{})
	if err != nil {
		return nil, err
	}
	return &Outbox{k: k, deliver: deliver, sq: sq, pg: pg}, nil
}

// SQLiteAfterInsert is sqlitestore's Options.AfterInsert.
func (o *Outbox) SQLiteAfterInsert(ctx context.Context, tx *sql.Tx, rec consent.Record) error {
	ev, err := NewConsentEvent(rec, o.k)
	if err != nil {
		return err
	}
	_, _, err = o.addSQLite(ctx, tx, ev)
	return err
}

// PostgresAfterInsert is pgstore's Options.AfterInsert.
func (o *Outbox) PostgresAfterInsert(ctx context.Context, tx pgx.Tx, rec consent.Record) error {
	ev, err := NewConsentEvent(rec, o.k)
	if err != nil {
		return err
	}
	_, _, err = o.addPostgres(ctx, tx, ev)
	return err
}

func (o *Outbox) addSQLite(ctx context.Context, tx *sql.Tx, ev Event) (AuditEntry, bool, error) {
	e, created, err := appendAudit(ctx, sqlQ{tx}, ev)
	if err != nil || !created || !o.deliver {
		return e, created, err
	}
	if _, err := o.sq.InsertTx(ctx, tx, DeliverArgs{EventID: ev.ID}, nil); err != nil {
		return e, created, fmt.Errorf("relay: enqueue delivery: %w", err)
	}
	return e, created, nil
}

func (o *Outbox) addPostgres(ctx context.Context, tx pgx.Tx, ev Event) (AuditEntry, bool, error) {
	e, created, err := appendAudit(ctx, pgQ{tx}, ev)
	if err != nil || !created || !o.deliver {
		return e, created, err
	}
	if _, err := o.pg.InsertTx(ctx, tx, DeliverArgs{EventID: ev.ID}, nil); err != nil {
		return e, created, fmt.Errorf("relay: enqueue delivery: %w", err)
	}
	return e, created, nil
}

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
	// Workers is how many deliveries run at once (default 4).
	Workers int
	// PollInterval is how often River looks for due jobs (default: River's,
	// 1 s). On SQLite it is also the delay before a fresh job is picked up.
	PollInterval time.Duration

	Now    func() time.Time // default time.Now; tests inject a clock
	Logger *slog.Logger     // default: discard
}

// Relay delivers audited events to Zapier and answers the operator commands
// (list failed, replay, verify, decrypt) for one database.
type Relay struct {
	cfg     Config
	outbox  *Outbox
	b       backend
	zapier  *Zapier
	backoff Backoff
	log     *slog.Logger
}

// backend is what differs between SQLite and PostgreSQL.
type backend interface {
	entry(ctx context.Context, eventID string) (AuditEntry, error)
	walk(ctx context.Context, fn func(AuditEntry) error) error
	record(ctx context.Context, ev Event) (AuditEntry, bool, error)
	enqueue(ctx context.Context, eventID string) (int64, error)
	list(ctx context.Context, p *river.JobListParams) ([]Delivery, error)
	start(ctx context.Context) error
	stop(ctx context.Context) error
}

func newRelay(cfg Config) (*Relay, error) {
	if cfg.Keyring == nil {
		return nil, errors.New("relay: Config.Keyring is required")
	}
	if cfg.PII == "" {
		cfg.PII = PIIEncrypted
	}
	if _, err := ParsePIIMode(string(cfg.PII)); err != nil {
		return nil, err
	}
	if cfg.WebhookURL != "" && cfg.Signer == nil {
		return nil, errors.New("RELAY_SIGNING_SECRET is required when ZAPIER_WEBHOOK_URL is set (make one with: echo whsec_$(openssl rand -base64 32))")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
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
	ob, err := NewOutbox(cfg.Keyring, cfg.WebhookURL != "")
	if err != nil {
		return nil, err
	}
	client := cfg.HTTPClient
	return &Relay{
		cfg:     cfg,
		outbox:  ob,
		zapier:  &Zapier{URL: cfg.WebhookURL, Signer: cfg.Signer, Client: client, Timeout: cfg.AttemptTimeout, Now: cfg.Now},
		backoff: b,
		log:     log,
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
	}
	if r.cfg.PollInterval > 0 {
		c.FetchPollInterval = r.cfg.PollInterval
		c.FetchCooldown = min(r.cfg.PollInterval, 100*time.Millisecond)
	}
	return c
}

// Outbox returns the relay's outbox (its hooks are the stores'
// AfterInsert).
func (r *Relay) Outbox() *Outbox { return r.outbox }

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

// Stop stops the workers, letting running deliveries finish until ctx ends.
func (r *Relay) Stop(ctx context.Context) error {
	if !r.Delivering() {
		return nil
	}
	return r.b.stop(ctx)
}

// RecordCallCompleted audits the call.completed event for a finished call
// and queues its delivery, in one transaction. A repeated status callback
// for the same call finds the event already there and changes nothing
// (created false).
func (r *Relay) RecordCallCompleted(ctx context.Context, c CallCompleted) (ev Event, created bool, err error) {
	if r.cfg.Pseudonymizer == nil {
		return Event{}, false, errors.New("relay: Config.Pseudonymizer is required for call.completed")
	}
	ev, err = NewCallCompletedEvent(c, r.cfg.Keyring, r.cfg.Pseudonymizer)
	if err != nil {
		return Event{}, false, err
	}
	_, created, err = r.b.record(ctx, ev)
	return ev, created, err
}
