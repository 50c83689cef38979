package relay

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
)

// MigrateSQLite creates or upgrades River's own tables in the embedded
// database. The relay_audit table comes with the store's migrations
// (consent/sqlitestore/migrations/0002_relay_audit.sql).
func MigrateSQLite(ctx context.Context, db *sql.DB) error {
	m, err := rivermigrate.New(riversqlite.New(db), nil)
	if err != nil {
		return fmt.Errorf("relay: river migrator: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("relay: river migrations: %w", err)
	}
	return nil
}

// NewSQLite returns a Relay over the embedded database (sqlitestore's DB()).
func NewSQLite(db *sql.DB, cfg Config) (*Relay, error) {
	r, err := newRelay(cfg)
	if err != nil {
		return nil, err
	}
	client, err := river.NewClient(riversqlite.New(db), r.riverConfig())
	if err != nil {
		return nil, fmt.Errorf("relay: river client: %w", err)
	}
	r.b = &sqliteBackend{db: db, client: client, outbox: r.outbox}
	r.newCallBatcher()
	return r, nil
}

type sqliteBackend struct {
	db     *sql.DB
	client *river.Client[*sql.Tx]
	outbox *Outbox
}

func (s *sqliteBackend) entry(ctx context.Context, id string) (AuditEntry, error) {
	return loadEntry(ctx, sqlQ{s.db}, id)
}

func (s *sqliteBackend) walk(ctx context.Context, fn func(AuditEntry) error) error {
	rows, err := s.db.QueryContext(ctx, `SELECT `+auditColumns+` FROM relay_audit ORDER BY chain, seq`)
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

func (s *sqliteBackend) record(ctx context.Context, evs []Event) ([]bool, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	created, err := s.outbox.addSQLite(ctx, tx, evs)
	if err != nil {
		return nil, err
	}
	return created, tx.Commit()
}

func (s *sqliteBackend) enqueue(ctx context.Context, eventID string) (int64, error) {
	res, err := s.client.Insert(ctx, DeliverArgs{EventID: eventID}, nil)
	if err != nil {
		return 0, err
	}
	return res.Job.ID, nil
}

func (s *sqliteBackend) list(ctx context.Context, p *river.JobListParams) ([]Delivery, error) {
	res, err := s.client.JobList(ctx, p)
	if err != nil {
		return nil, err
	}
	return deliveries(res.Jobs), nil
}

func (s *sqliteBackend) start(ctx context.Context) error         { return s.client.Start(ctx) }
func (s *sqliteBackend) stop(ctx context.Context) error          { return s.client.Stop(ctx) }
func (s *sqliteBackend) stopAndCancel(ctx context.Context) error { return s.client.StopAndCancel(ctx) }
