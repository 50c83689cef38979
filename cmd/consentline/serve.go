package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	twilioclient "github.com/twilio/twilio-go/client"
	twilioapi "github.com/twilio/twilio-go/rest/api/v2010"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/pgstore"
	"github.com/consentline/consentline/consent/redislock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/relay"
)

// shutdownGrace is how long in-flight webhooks get to finish on SIGTERM
// (Railway sends it on every deploy) before the server stops.
const shutdownGrace = 10 * time.Second

func serve(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	s, err := loadSettings(getenv)
	if err != nil {
		return badSettings{err}
	}
	log := slog.New(slog.NewJSONHandler(stdout, nil))

	outbox, err := relay.NewOutbox(s.Keys, s.ZapierWebhookURL != "")
	if err != nil {
		return err
	}
	b, err := openBackends(ctx, s.DatabaseURL, s.RedisURL, s.DataDir, outbox)
	if err != nil {
		return err
	}
	defer b.close()

	cfg, rel, err := newApp(ctx, s, b, log)
	if err != nil {
		return err
	}
	app := ivr.New(cfg)
	// The relay's workers outlive the request context: they stop after the
	// HTTP server has drained, so a decision taken during shutdown is still
	// queued (and delivered by whichever instance runs next).
	if err := rel.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("starting the relay: %w", err)
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := rel.Stop(stopCtx); err != nil {
			log.Error("relay stop", "error", err)
		}
	}()

	// Checkpoints: the chain heads are signed in the background (every
	// relay.DefaultCheckpointEvery entries, or a minute with anything new);
	// every instance runs the loop, and a head two sign at once is kept once.
	signer, keySource, err := auditSigner(ctx, s.AuditSigner, b.store, s.Keys)
	if err != nil {
		return err
	}
	checkpoints, err := rel.Checkpointer(signer, relay.CheckpointPolicy{})
	if err != nil {
		return err
	}
	cpCtx, stopCheckpoints := context.WithCancel(context.WithoutCancel(ctx))
	cpDone := make(chan struct{})
	go func() {
		defer close(cpDone)
		checkpoints.Run(cpCtx)
	}()
	defer func() { stopCheckpoints(); <-cpDone }()

	srv := &http.Server{
		Addr:              net.JoinHostPort("", strconv.Itoa(s.Port)),
		Handler:           app,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       90 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	sweepCtx, stopSweep := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSweep()
	sweepDone := make(chan struct{})
	go func() {
		defer close(sweepDone)
		app.Sweep(sweepCtx, sweepInterval, sweepGrace)
	}()
	log.Info("consentline serving", "port", s.Port, "database", b.kind, "lock", b.lockKind,
		"public_base_url", s.PublicBaseURL, "relay_to_zapier", rel.Delivering(),
		"audit_key_id", signer.KeyID(), "audit_key", keySource)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight requests")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	// Webhooks answered with a hold may have left decision work running;
	// it must commit (or fail) before the deferred closes of the relay and
	// the stores run. The sweep stops first.
	stopSweep()
	<-sweepDone
	if err := app.Drain(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	// Then the checkpoint loop, and one last pass signing what the drained
	// decisions appended.
	stopCheckpoints()
	<-cpDone
	if _, err := checkpoints.Checkpoint(shutdownCtx); err != nil {
		log.Error("audit checkpoint at shutdown", "error", err)
	}
	return nil
}

// newApp wires the consent service and the relay over opened backends and
// returns the IVR's configuration (the demo adjusts its clock before
// ivr.New) and the relay (not yet started).
func newApp(ctx context.Context, s *settings, b *backends, log *slog.Logger) (ivr.Config, *relay.Relay, error) {
	pseudonyms, err := pii.LoadPseudonymizer(ctx, b.store, s.Keys)
	if err != nil {
		return ivr.Config{}, nil, err
	}
	rel, err := newRelay(s, b.database, pseudonyms, log)
	if err != nil {
		return ivr.Config{}, nil, err
	}
	svc := consent.NewService(consent.Config{
		Store:      b.store,
		Locker:     b.locker,
		Threshold:  s.Threshold,
		Seal:       s.Keys.SealFor,
		Open:       s.Keys.OpenFor,
		PatientRef: pseudonyms.Ref,
	})
	return ivr.Config{
		PublicBaseURL: s.PublicBaseURL,
		AuthToken:     s.AuthToken,
		AccountSID:    s.AccountSID,
		Scripts:       s.Scripts,
		Consent:       svc,
		Ready:         b.ready,
		CallCompleted: func(ctx context.Context, c ivr.CallStatus) error {
			_, _, err := rel.RecordCallCompleted(ctx, relay.CallCompleted{CallSID: c.CallSID, From: c.From, To: c.To, At: time.Now()})
			return err
		},
		FetchCallStatus: ivr.TwilioCallStatus(twilioAPI(s.AccountSID, s.AuthToken)),
		Logger:          log,
	}, rel, nil
}

// twilioAPI is twilio-go's REST client for the account (Fetch Call, for
// the sweep of calls whose status callback was lost).
func twilioAPI(accountSID, authToken string) *twilioapi.ApiService {
	c := &twilioclient.Client{Credentials: twilioclient.NewCredentials(accountSID, authToken)}
	c.SetAccountSid(accountSID)
	return twilioapi.NewApiServiceWithClient(c)
}

// The sweep of calls without a status callback: how often, and how long
// after a call started it may be swept (a status callback comes seconds
// after the hang-up; the sweep asks Twilio whether a call has ended, so a
// long call is only swept after it ends).
const (
	sweepInterval = time.Minute
	sweepGrace    = 2 * time.Minute
)

// newRelay builds the relay from the settings: audit always, Zapier
// delivery when ZAPIER_WEBHOOK_URL is set.
func newRelay(s *settings, db *database, pseudonyms *pii.Pseudonymizer, log *slog.Logger) (*relay.Relay, error) {
	cfg := relay.Config{
		Keyring: s.Keys, Pseudonymizer: pseudonyms, PII: s.RelayPII, RescueAfter: s.RelayRescueAfter, RateLimit: s.RelayRateLimit, Logger: log,
		WebhookURL: s.ZapierWebhookURL, Signer: s.RelaySigner,
	}
	return db.newRelay(cfg)
}

// backends are the store and lock the settings chose: PostgreSQL or the
// embedded SQLite, Redis or the in-process lock.
type backends struct {
	*database
	locker   consent.Locker
	lockKind string
	redis    *redis.Client
	// redisLock is locker when it is Redis's: its release subscription is
	// closed with the client.
	redisLock *redislock.Locker
}

// database is the store the settings chose and the relay that runs on it.
type database struct {
	kind     string
	store    consent.Store
	newRelay func(relay.Config) (*relay.Relay, error)
}

// openDatabase opens and migrates PostgreSQL when databaseURL is set, else
// the embedded SQLite database in dataDir; River's tables are migrated with
// the store's own.
func openDatabase(ctx context.Context, databaseURL, dataDir string, outbox *relay.Outbox) (*database, error) {
	if databaseURL != "" {
		opts := pgstore.Options{Migrate: true}
		if outbox != nil {
			opts.AfterInsert = outbox.PostgresAfterInsert
		}
		st, err := pgstore.Open(ctx, databaseURL, opts)
		if err != nil {
			return nil, fmt.Errorf("opening the postgres database: %w", err)
		}
		if err := relay.MigratePostgres(ctx, st.Pool()); err != nil {
			_ = st.Close()
			return nil, fmt.Errorf("migrating the relay's job tables: %w", err)
		}
		return &database{kind: "postgres", store: st, newRelay: func(c relay.Config) (*relay.Relay, error) {
			return relay.NewPostgres(st.Pool(), c)
		}}, nil
	}
	opts := sqlitestore.Options{Migrate: true}
	if outbox != nil {
		opts.AfterInsert = outbox.SQLiteAfterInsert
	}
	st, err := sqlitestore.Open(ctx, dataDir, opts)
	if err != nil {
		return nil, fmt.Errorf("opening the sqlite database in %s: %w", dataDir, err)
	}
	if err := relay.MigrateSQLite(ctx, st.DB()); err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("migrating the relay's job tables: %w", err)
	}
	return &database{kind: "sqlite", store: st, newRelay: func(c relay.Config) (*relay.Relay, error) {
		return relay.NewSQLite(st.DB(), c)
	}}, nil
}

// openBackends opens the database (with outbox writing each record's relay
// event in the record's transaction; nil for none) and the per-call lock.
func openBackends(ctx context.Context, databaseURL, redisURL, dataDir string, outbox *relay.Outbox) (*backends, error) {
	db, err := openDatabase(ctx, databaseURL, dataDir, outbox)
	if err != nil {
		return nil, err
	}
	b := &backends{database: db}
	if redisURL != "" {
		// Timeouts, pool and retries sized for a webhook's 2-second budget.
		b.redis, err = redislock.NewClient(redisURL)
		if err != nil {
			b.close()
			return nil, badSettings{&settingError{"REDIS_URL", "does not parse as a redis:// URL"}}
		}
		b.redisLock = redislock.New(b.redis, redislock.Options{Prefix: "consentline:lock:", TTL: redislock.WebhookTTL})
		b.locker = b.redisLock
		b.lockKind = "redis"
	} else {
		b.locker = memlock.New()
		b.lockKind = "in-process"
	}
	return b, nil
}

// ready reports whether the database and the lock backend answer; an
// error is an ivr.NotReady naming the one that does not (b.kind is
// ivr.BackendPostgres or ivr.BackendSQLite).
func (b *backends) ready(ctx context.Context) error {
	if err := b.store.Ping(ctx); err != nil {
		return ivr.NotReady{Backend: b.kind, Err: err}
	}
	if b.redis != nil {
		if err := b.redis.Ping(ctx).Err(); err != nil {
			return ivr.NotReady{Backend: ivr.BackendRedis, Err: err}
		}
	}
	return nil
}

func (b *backends) close() {
	if b.redisLock != nil {
		_ = b.redisLock.Close()
	}
	if b.redis != nil {
		_ = b.redis.Close()
	}
	if b.database != nil {
		_ = b.store.Close()
	}
}

// migrate applies the database migrations and exits: run it before a
// deploy, or let serve apply them at start (both are safe together).
func migrate(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	db, err := openDatabase(ctx, getenv("DATABASE_URL"), orDefault(getenv("DATA_DIR"), "./data"), nil)
	if err != nil {
		return err
	}
	_ = db.store.Close()
	fmt.Fprintf(stdout, "%s database migrated\n", db.kind)
	return nil
}
