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
//
// Replicas starting together all run it: a session advisory lock, held on
// one connection of the pool, makes them take turns, so the later ones find
// nothing left to do. (Not one transaction: River's own migrations commit
// per version, and one of them adds an enum value it then uses.)
func MigratePostgres(ctx context.Context, pool *pgxpool.Pool) error {
	m, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		return fmt.Errorf("relay: river migrator: %w", err)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("relay: river migrations: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, riverMigrationLockKey); err != nil {
		return fmt.Errorf("relay: river migration lock: %w", err)
	}
	defer func() {
		// A failed unlock leaves the lock to the session: closing the
		// connection ends it.
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, riverMigrationLockKey); err != nil {
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
	}()
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("relay: river migrations: %w", err)
	}
	return nil
}

// riverMigrationLockKey serializes River's migrations across replicas.
const riverMigrationLockKey int64 = 0x72697665726d6967 // "rivermig"

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
	r.newCallBatcher()
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
	rows, err := p.pool.Query(ctx, `SELECT `+auditColumns+` FROM relay_audit ORDER BY chain, seq`)
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

func (p *pgBackend) record(ctx context.Context, evs []Event) ([]bool, error) {
	var created []bool
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		var err error
		created, err = p.outbox.addPostgres(ctx, tx, evs)
		return err
	})
	return created, err
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

func (p *pgBackend) start(ctx context.Context) error         { return p.client.Start(ctx) }
func (p *pgBackend) stop(ctx context.Context) error          { return p.client.Stop(ctx) }
func (p *pgBackend) stopAndCancel(ctx context.Context) error { return p.client.StopAndCancel(ctx) }
