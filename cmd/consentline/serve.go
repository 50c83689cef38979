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

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/pgstore"
	"github.com/consentline/consentline/consent/pii"
	"github.com/consentline/consentline/consent/redislock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/ivr"
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

	b, err := openBackends(ctx, s.DatabaseURL, s.RedisURL, s.DataDir)
	if err != nil {
		return err
	}
	defer b.close()

	cfg, err := newApp(ctx, s, b, log)
	if err != nil {
		return err
	}
	app := ivr.New(cfg)

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
	log.Info("consentline serving", "port", s.Port, "database", b.kind, "lock", b.lockKind, "public_base_url", s.PublicBaseURL)

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
	return nil
}

// newApp wires the consent service over opened backends and returns the
// IVR's configuration (the demo adjusts its clock before ivr.New).
func newApp(ctx context.Context, s *settings, b *backends, log *slog.Logger) (ivr.Config, error) {
	pseudonyms, err := pii.LoadPseudonymizer(ctx, b.store, s.Keys)
	if err != nil {
		return ivr.Config{}, err
	}
	svc := consent.NewService(consent.Config{
		Store:      b.store,
		Locker:     b.locker,
		Threshold:  s.Threshold,
		Seal:       s.Keys.Seal,
		PatientRef: pseudonyms.Ref,
	})
	return ivr.Config{
		PublicBaseURL: s.PublicBaseURL,
		AuthToken:     s.AuthToken,
		Scripts:       s.Scripts,
		Consent:       svc,
		Ready:         b.ready,
		Logger:        log,
	}, nil
}

// backends are the store and lock the settings chose: PostgreSQL or the
// embedded SQLite, Redis or the in-process lock.
type backends struct {
	store    consent.Store
	locker   consent.Locker
	kind     string
	lockKind string
	redis    *redis.Client
}

func openBackends(ctx context.Context, databaseURL, redisURL, dataDir string) (*backends, error) {
	b := &backends{}
	var err error
	if databaseURL != "" {
		b.kind = "postgres"
		b.store, err = pgstore.Open(ctx, databaseURL, pgstore.Options{Migrate: true})
	} else {
		b.kind = "sqlite"
		b.store, err = sqlitestore.Open(ctx, dataDir, sqlitestore.Options{Migrate: true})
	}
	if err != nil {
		return nil, fmt.Errorf("opening the %s database: %w", b.kind, err)
	}
	if redisURL != "" {
		// Timeouts, pool and retries sized for a webhook's 2-second budget.
		b.redis, err = redislock.NewClient(redisURL)
		if err != nil {
			b.close()
			return nil, badSettings{&settingError{"REDIS_URL", "does not parse as a redis:// URL"}}
		}
		b.locker = redislock.New(b.redis, redislock.Options{Prefix: "consentline:lock:"})
		b.lockKind = "redis"
	} else {
		b.locker = memlock.New()
		b.lockKind = "in-process"
	}
	return b, nil
}

// ready reports whether the database and the lock backend answer.
func (b *backends) ready(ctx context.Context) error {
	if err := b.store.Ping(ctx); err != nil {
		return fmt.Errorf("%s database unreachable: %w", b.kind, err)
	}
	if b.redis != nil {
		if err := b.redis.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis unreachable: %w", err)
		}
	}
	return nil
}

func (b *backends) close() {
	if b.redis != nil {
		_ = b.redis.Close()
	}
	if b.store != nil {
		_ = b.store.Close()
	}
}

// migrate applies the database migrations and exits: run it before a
// deploy, or let serve apply them at start (both are safe together).
func migrate(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	databaseURL := getenv("DATABASE_URL")
	b, err := openBackends(ctx, databaseURL, "", orDefault(getenv("DATA_DIR"), "./data"))
	if err != nil {
		return err
	}
	b.close()
	fmt.Fprintf(stdout, "%s database migrated\n", b.kind)
	return nil
}
