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
	"sync/atomic"
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
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/mediastream"
	"github.com/consentline/consentline/mediastream/deepgram"
	"github.com/consentline/consentline/relay"
	"github.com/consentline/consentline/relay/relaypg"
	"github.com/consentline/consentline/relay/relaysqlite"
)

func serve(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	s, err := loadSettings(getenv)
	if err != nil {
		return badSettings{err}
	}
	log := slog.New(slog.NewJSONHandler(stdout, nil))
	metrics := telemetry.New()

	outbox := &outboxSettings{keys: s.Keys, deliver: s.ZapierWebhookURL != ""}
	b, err := openBackends(ctx, s.DatabaseURL, s.RedisURL, s.DataDir, outbox, metrics)
	if err != nil {
		return err
	}
	defer b.close()

	cfg, rel, err := newApp(ctx, s, b, log)
	if err != nil {
		return err
	}
	// From SIGTERM on, /readyz answers 503, so a load balancer that checks
	// it sends nothing new here while the drain runs.
	var draining atomic.Bool
	backendsReady := cfg.Ready
	cfg.Ready = func(ctx context.Context) error {
		if draining.Load() {
			return ivr.NotReady{Backend: "shutting down", Err: errShuttingDown}
		}
		return backendsReady(ctx)
	}
	app := ivr.New(cfg)
	// closeStreams closes what hijacked connections serve (http.Server's
	// Shutdown neither waits for nor closes them): the media streams'
	// websockets. Run in order, after new connections stop and before
	// decision work is drained (a stream's end can still decide).
	var closeStreams []func(context.Context) error
	streams, err := mountStreams(app, cfg, s, log, metrics)
	if err != nil {
		return err
	}
	if streams != nil {
		closeStreams = append(closeStreams, streams.Shutdown)
	}
	// The relay's workers outlive the request context: they stop after the
	// HTTP server has drained, so a decision taken during shutdown is still
	// queued (and delivered by whichever instance runs next).
	if err := rel.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("starting the relay: %w", err)
	}
	defer func() {
		// On an early return; after a drain the relay has stopped already
		// and this returns at once.
		stopCtx, cancel := context.WithTimeout(context.Background(), drainRelay)
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
		Handler:           closeWhenDraining(telemetry.Serve(app.Router(), log, metrics, s.MetricsToken), &draining),
		ErrorLog:          httpErrorLog(log),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       90 * time.Second,
	}
	// Bound before "consentline serving" is logged, so the line means the
	// port is this process's (a port already taken stops serve here, with
	// one line saying so, instead of after the line).
	ln, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		return fmt.Errorf("listening on PORT %d: %w", s.Port, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
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
	log.Info("shutting down", "budget", drainBudget())
	return drain(log, []drainPhase{
		{"announce", drainAnnounce, func(ctx context.Context) error {
			// /readyz answers 503 while webhooks are still served, each
			// with Connection: close, until load balancers have seen it.
			// (Not SetKeepAlivesEnabled(false): it closes idle connections
			// at once, racing a request just sent on one.)
			draining.Store(true)
			<-ctx.Done()
			return nil
		}},
		{"http", drainHTTP, func(ctx context.Context) error {
			// No new connections; in-flight webhooks are answered.
			if err := srv.Shutdown(ctx); err != nil {
				return err
			}
			if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		}},
		{"media streams", drainStreams, func(ctx context.Context) error {
			var errs []error
			for _, closeFn := range closeStreams {
				errs = append(errs, closeFn(ctx))
			}
			return errors.Join(errs...)
		}},
		{"decisions", drainDecisions, func(ctx context.Context) error {
			// Webhooks answered with a hold may have left decision work
			// running; it must commit (or fail) before the relay and the
			// stores close. The sweep stops first.
			stopSweep()
			<-sweepDone
			return app.Drain(ctx)
		}},
		{"relay", drainRelay, func(ctx context.Context) error {
			// River fetches nothing more; deliveries still running near the
			// deadline are handed back to the queue.
			return rel.Stop(ctx)
		}},
		{"checkpoint", drainCheckpoint, func(ctx context.Context) error {
			// One last pass signing what the drained decisions appended.
			stopCheckpoints()
			<-cpDone
			_, err := checkpoints.Checkpoint(ctx)
			return err
		}},
	})
}

var errShuttingDown = errors.New("serve is shutting down (SIGTERM)")

// closeWhenDraining answers with Connection: close once draining is set, so
// clients open their next connection elsewhere before this server stops
// accepting.
func closeWhenDraining(h http.Handler, draining *atomic.Bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// The drain after SIGTERM. Railway sends SIGKILL drainingSeconds after
// SIGTERM (railway.toml; Kubernetes' terminationGracePeriodSeconds and
// Fly's kill_timeout are the same window), so the phases' budgets add up
// to 2 s less, for the process to exit and the database to close. Each
// phase has its own budget, counted from its start; time a phase leaves
// unused shortens the drain rather than lengthening a later phase (the
// relay's, above all: a delivery still running 2 s into it is handed back
// and resent by the next instance with the same webhook-id, rather than
// waited for until the attempt's own 10 s timeout counts it a failure).
// TestDrainFitsRailway checks the sum against railway.toml.
const (
	drainAnnounce   = 1 * time.Second // /readyz 503 while still serving
	drainHTTP       = 4 * time.Second // in-flight webhooks (each answered within 2 s)
	drainStreams    = 2 * time.Second // media streams closed
	drainDecisions  = 2 * time.Second // detached decision work (1 s timeout, plus the store's cancel grace)
	drainRelay      = 3 * time.Second // running deliveries finish, or are handed back
	drainCheckpoint = 1 * time.Second // the last checkpoint signed
)

// drainBudget is the whole drain: the phases' budgets added up.
func drainBudget() time.Duration {
	return drainAnnounce + drainHTTP + drainStreams + drainDecisions + drainRelay + drainCheckpoint
}

// drainPhase is one step of the drain.
type drainPhase struct {
	name   string
	budget time.Duration
	run    func(ctx context.Context) error
}

// drain runs the phases in order, each for at most its budget, and logs
// how long each took. A phase that fails does not
// stop the later ones (the relay still stops, the checkpoint is still
// signed); its error is returned with the others.
func drain(log *slog.Logger, phases []drainPhase) error {
	var errs []error
	for _, p := range phases {
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), p.budget)
		err := p.run(ctx)
		cancel()
		if err != nil {
			log.Error("shutdown phase failed", "phase", p.name, "took", time.Since(began), "error", err)
			errs = append(errs, fmt.Errorf("shutdown: %s: %w", p.name, err))
			continue
		}
		log.Info("shutdown phase done", "phase", p.name, "took", time.Since(began))
	}
	return errors.Join(errs...)
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
	b.metrics.WatchRelayQueue(rel.QueueDepth)
	svc := consent.NewService(consent.Config{
		Store:      b.store,
		Locker:     b.locker,
		Threshold:  s.Threshold,
		Seal:       s.Keys.SealFor,
		Open:       s.Keys.OpenFor,
		PatientRef: pseudonyms.Ref,
		Metrics:    b.metrics,
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
		MediaStreams:    s.MediaStreams,
		UpdateCallURL:   ivr.TwilioUpdateCallURL(twilioAPI(s.AccountSID, s.AuthToken)),
		Logger:          log,
		Metrics:         b.metrics,
	}, rel, nil
}

// mountStreams serves the media streams the disclosure TwiML starts (when
// MEDIA_STREAMS is on) at ivr.PathStream on app's router: each stream's
// audio is measured (mediastream.Calls) and, with DEEPGRAM_API_KEY, its
// answer recognized and decided; a stream's decision moves the call to
// its read-back through app. It returns nil when streams are off.
func mountStreams(app *ivr.Server, cfg ivr.Config, s *settings, log *slog.Logger, metrics *telemetry.Metrics) (*mediastream.Server, error) {
	if !s.MediaStreams {
		return nil, nil
	}
	calls := &mediastream.Calls{
		Consent:        cfg.Consent,
		Scripts:        s.Scripts,
		MoveToReadBack: app.MoveToReadBack,
		Logger:         log,
		Metrics:        metrics,
	}
	if s.DeepgramAPIKey != "" {
		calls.Recognizer = deepgram.Recognizer{Config: deepgram.Config{APIKey: s.DeepgramAPIKey, URL: s.DeepgramURL, Logger: log}}
	}
	streams, err := mediastream.NewServer(mediastream.Config{
		PublicURL:  ivr.StreamURL(s.PublicBaseURL),
		AuthToken:  s.AuthToken,
		AccountSID: s.AccountSID,
		Logger:     log,
		Metrics:    metrics,
		Open:       calls.Open,
	})
	if err != nil {
		return nil, fmt.Errorf("media streams: %w", err)
	}
	app.Router().Handle(ivr.PathStream, streams)
	return streams, nil
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
		Keyring: s.Keys, Pseudonymizer: pseudonyms, PII: s.RelayPII, RescueAfter: s.RelayRescueAfter, RateLimit: s.RelayRateLimit,
		Logger: log, Metrics: db.metrics,
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
	metrics  *telemetry.Metrics // nil for the commands other than serve
	store    consent.Store
	newRelay func(relay.Config) (*relay.Relay, error)
}

// outboxSettings are what the relay's outbox writer needs: the keyring its
// events are sealed with, and whether Zapier delivery is on (then each
// event also gets a delivery job).
type outboxSettings struct {
	keys    *pii.Keyring
	deliver bool
}

// openDatabase opens and migrates PostgreSQL when databaseURL is set, else
// the embedded SQLite database in dataDir; the relay's tables (its audit
// log's and River's) are migrated after the store's own. With outbox (nil
// for none, for commands that record nothing), the store is given that
// driver's relay outbox writer, which writes each record's relay event in
// the record's transaction. m (nil for none) records the store's commits.
func openDatabase(ctx context.Context, databaseURL, dataDir string, outbox *outboxSettings, m *telemetry.Metrics) (*database, error) {
	if databaseURL != "" {
		opts := pgstore.Options{Migrate: true, Metrics: m}
		if outbox != nil {
			ob, err := relay.NewOutbox(relaypg.New(nil), outbox.keys, outbox.deliver)
			if err != nil {
				return nil, err
			}
			opts.Outbox = ob
		}
		st, err := pgstore.Open(ctx, databaseURL, opts)
		if err != nil {
			return nil, fmt.Errorf("opening the postgres database: %w", err)
		}
		if err := relaypg.Migrate(ctx, st.Pool()); err != nil {
			_ = st.Close()
			return nil, fmt.Errorf("migrating the relay's tables: %w", err)
		}
		return &database{kind: "postgres", metrics: m, store: st, newRelay: func(c relay.Config) (*relay.Relay, error) {
			return relay.New(relaypg.New(st.Pool()), c)
		}}, nil
	}
	opts := sqlitestore.Options{Migrate: true, Metrics: m}
	if outbox != nil {
		ob, err := relay.NewOutbox(relaysqlite.New(nil), outbox.keys, outbox.deliver)
		if err != nil {
			return nil, err
		}
		opts.Outbox = ob
	}
	st, err := sqlitestore.Open(ctx, dataDir, opts)
	if err != nil {
		return nil, fmt.Errorf("opening the sqlite database in %s: %w", dataDir, err)
	}
	if err := relaysqlite.Migrate(ctx, st.DB()); err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("migrating the relay's tables: %w", err)
	}
	return &database{kind: "sqlite", metrics: m, store: st, newRelay: func(c relay.Config) (*relay.Relay, error) {
		return relay.New(relaysqlite.New(st.DB()), c)
	}}, nil
}

// openBackends opens the database (with outbox writing each record's relay
// event in the record's transaction; nil for none) and the per-call lock;
// m (nil for none) is what the app built on them records into.
func openBackends(ctx context.Context, databaseURL, redisURL, dataDir string, outbox *outboxSettings, m *telemetry.Metrics) (*backends, error) {
	db, err := openDatabase(ctx, databaseURL, dataDir, outbox, m)
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
	db, err := openConfiguredDatabase(ctx, getenv)
	if err != nil {
		return err
	}
	_ = db.store.Close()
	fmt.Fprintf(stdout, "%s database migrated\n", db.kind)
	return nil
}
