package relay

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// MigratePostgres creates or upgrades River's own tables. The relay_audit
// table and its append-only triggers come with the store's migrations
// (consent/pgstore/migrations/0002_relay_audit.sql).
func MigratePostgres(ctx context.Context, pool *pgxpool.Pool) error {
	m, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		return fmt.Errorf("relay: river migrator: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("relay: river migrations: %w", err)
	}
	return nil
}

// NewPostgres returns a Relay over PostgreSQL (pgstore's Pool()).
func NewPostgres(pool *pgxpool.Pool, cfg Config) (*Relay, error) {
	r, err := newRelay(cfg)
	if err != nil {
		return nil, err
	}
	client, err := river.NewClient(riverpgxv5.New(pool), r.riverConfig())
	if err != nil {
		return nil, fmt.Errorf("relay: river client: %w", err)
	}
	r.b = &pgBackend{pool: pool, client: client, outbox: r.outbox}
	return r, nil
}

type pgBackend struct {
	pool   *pgxpool.Pool
	client *river.Client[pgx.Tx]
	outbox *Outbox
}

func (p *pgBackend) entry(ctx context.Context, id string) (AuditEntry, error) {
	return loadEntry(ctx, pgQ{p.pool}, id)
}

func (p *pgBackend) walk(ctx context.Context, fn func(AuditEntry) error) error {
	rows, err := p.pool.Query(ctx, `SELECT `+auditColumns+` FROM relay_audit ORDER BY seq`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return rows.Err()
}

func (p *pgBackend) record(ctx context.Context, ev Event) (AuditEntry, bool, error) {
	var (
		e       AuditEntry
		created bool
	)
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		var err error
		e, created, err = p.outbox.addPostgres(ctx, tx, ev)
		return err
	})
	return e, created, err
}

func (p *pgBackend) enqueue(ctx context.Context, eventID string) (int64, error) {
	res, err := p.client.Insert(ctx, DeliverArgs{EventID: eventID}, nil)
	if err != nil {
		return 0, err
	}
	return res.Job.ID, nil
}

func (p *pgBackend) list(ctx context.Context, params *river.JobListParams) ([]Delivery, error) {
	res, err := p.client.JobList(ctx, params)
	if err != nil {
		return nil, err
	}
	return deliveries(res.Jobs), nil
}

func (p *pgBackend) start(ctx context.Context) error { return p.client.Start(ctx) }
func (p *pgBackend) stop(ctx context.Context) error  { return p.client.Stop(ctx) }
