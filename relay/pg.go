package relay

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/sqlmigrate"
)

// MigratePostgres creates or upgrades the relay's tables: its own
// (relay_audit, relay_audit_checkpoints: relay/migrations/postgres, history
// in relay_schema_migrations) and River's job tables.
//
// Replicas starting together all run it: a session advisory lock, held on
// one connection of the pool, makes them take turns, so the later ones find
// nothing left to do. (Not one transaction: River's own migrations commit
// per version, and one of them adds an enum value it then uses.)
func MigratePostgres(ctx context.Context, pool *pgxpool.Pool) error {
	ms, err := migrations("postgres")
	if err != nil {
		return fmt.Errorf("relay: migrate: %w", err)
	}
	m, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		return fmt.Errorf("relay: river migrator: %w", err)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("relay: migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrationLockKey); err != nil {
		return fmt.Errorf("relay: migration lock: %w", err)
	}
	defer func() {
		// A failed unlock leaves the lock to the session: closing the
		// connection ends it.
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, migrationLockKey); err != nil {
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
	}()
	if err := adoptPostgres(ctx, conn.Conn()); err != nil {
		return fmt.Errorf("relay: migrate: adopt the tables the consent store made: %w", err)
	}
	if err := sqlmigrate.ApplyPostgres(ctx, conn.Conn(), migrationHistory, ms); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("relay: river migrations: %w", err)
	}
	return nil
}

// adoptPostgres records as applied the relay migrations whose tables an
// older binary made with the consent store's migrations (see adoptable).
func adoptPostgres(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+migrationHistory+` (
    version    bigint      NOT NULL PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)`); err != nil {
		return err
	}
	var storeHistory bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&storeHistory); err != nil || !storeHistory {
		return err
	}
	for _, a := range adoptable {
		// One statement: the relay's row is written only if its table is
		// there and the store's history says the store's migration made it.
		if _, err := conn.Exec(ctx, `INSERT INTO `+migrationHistory+` (version, name)
SELECT $1, $2 WHERE to_regclass($3) IS NOT NULL
    AND EXISTS (SELECT 1 FROM schema_migrations WHERE version = $4 AND name = $5)
ON CONFLICT (version) DO NOTHING`, a.version, a.name, a.table, a.storeVersion, a.storeName); err != nil {
			return err
		}
	}
	return nil
}

// migrationLockKey serializes the relay's migrations (its own and River's)
// across replicas. The value spells "rivermig", the key River's migrations
// alone were taken under before the relay had its own.
const migrationLockKey int64 = 0x72697665726d6967

// PostgresOutbox is the relay's outbox writer on PostgreSQL: pgstore's
// Options.Outbox. Append writes the records' audit entries and delivery
// jobs in the store's transaction.
type PostgresOutbox struct {
	outboxEvents
	river *river.Client[pgx.Tx] // insert-only
}

var _ consent.Outbox[pgx.Tx] = (*PostgresOutbox)(nil)

// NewPostgresOutbox returns the PostgreSQL outbox writer sealing with k.
// deliver says whether Zapier delivery is on (ZAPIER_WEBHOOK_URL set); when
// it is off only the audit entries are written.
func NewPostgresOutbox(k *pii.Keyring, deliver bool) (*PostgresOutbox, error) {
	ev, err := newOutboxEvents(k, deliver)
	if err != nil {
		return nil, err
	}
	client, err := river.NewClient(riverpgxv5.New(nil), insertOnlyConfig())
	if err != nil {
		return nil, err
	}
	return &PostgresOutbox{outboxEvents: ev, river: client}, nil
}

// Append implements consent.Outbox: recs are the records pgstore created in
// tx, in its order.
func (o *PostgresOutbox) Append(ctx context.Context, tx pgx.Tx, recs []consent.Record) error {
	evs, err := o.consentEvents(recs)
	if err != nil {
		return err
	}
	_, err = o.add(ctx, tx, evs)
	return err
}

// add appends evs to the audit log and queues the deliveries of those new.
func (o *PostgresOutbox) add(ctx context.Context, tx pgx.Tx, evs []Event) ([]bool, error) {
	created, err := appendAudit(ctx, pgAudit{tx}, evs)
	if err != nil || !o.deliver {
		return created, err
	}
	if jobs := deliveryJobs(evs, created); len(jobs) > 0 {
		if _, err := o.river.InsertManyTx(ctx, tx, jobs); err != nil {
			return nil, fmt.Errorf("relay: enqueue delivery: %w", err)
		}
	}
	return created, nil
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
	ob, err := NewPostgresOutbox(cfg.Keyring, r.Delivering())
	if err != nil {
		return nil, err
	}
	r.b = &pgBackend{pool: pool, client: client, outbox: ob}
	r.newCallBatcher()
	return r, nil
}

type pgBackend struct {
	pool   *pgxpool.Pool
	client *river.Client[pgx.Tx]
	outbox *PostgresOutbox
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
		created, err = p.outbox.add(ctx, tx, evs)
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
