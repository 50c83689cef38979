package relay

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/sqlmigrate"
)

// MigrateSQLite creates or upgrades the relay's tables in the embedded
// database (sqlitestore's DB(), whose transactions begin IMMEDIATE): its own
// (relay_audit, relay_audit_checkpoints: relay/migrations/sqlite, history in
// relay_schema_migrations) and River's job tables. Several processes may
// run it at once: each step holds SQLite's write lock.
func MigrateSQLite(ctx context.Context, db *sql.DB) error {
	ms, err := migrations("sqlite")
	if err != nil {
		return fmt.Errorf("relay: migrate: %w", err)
	}
	if err := adoptSQLite(ctx, db); err != nil {
		return fmt.Errorf("relay: migrate: adopt the tables the consent store made: %w", err)
	}
	if err := sqlmigrate.ApplySQLite(ctx, db, migrationHistory, ms); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	m, err := rivermigrate.New(riversqlite.New(db), nil)
	if err != nil {
		return fmt.Errorf("relay: river migrator: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("relay: river migrations: %w", err)
	}
	return nil
}

// adoptSQLite records as applied the relay migrations whose tables an older
// binary made with the consent store's migrations (see adoptable), in one
// write transaction.
func adoptSQLite(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+migrationHistory+` (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at TEXT    NOT NULL
) STRICT`); err != nil {
		return err
	}
	var storeHistory int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'schema_migrations'`).Scan(&storeHistory); err != nil {
		return err
	}
	if storeHistory == 0 {
		return nil
	}
	for _, a := range adoptable {
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+migrationHistory+` (version, name, applied_at)
SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?)
    AND EXISTS (SELECT 1 FROM schema_migrations WHERE version = ? AND name = ?)
ON CONFLICT (version) DO NOTHING`, a.version, a.name, sqlmigrate.Now(), a.table, a.storeVersion, a.storeName); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// SQLiteOutbox is the relay's outbox writer on the embedded database:
// sqlitestore's Options.Outbox. Append writes the records' audit entries
// and delivery jobs in the store's transaction.
type SQLiteOutbox struct {
	outboxEvents
	river *river.Client[*sql.Tx] // insert-only
}

var _ consent.Outbox[*sql.Tx] = (*SQLiteOutbox)(nil)

// NewSQLiteOutbox returns the SQLite outbox writer sealing with k. deliver
// says whether Zapier delivery is on (ZAPIER_WEBHOOK_URL set); when it is
// off only the audit entries are written.
func NewSQLiteOutbox(k *pii.Keyring, deliver bool) (*SQLiteOutbox, error) {
	ev, err := newOutboxEvents(k, deliver)
	if err != nil {
		return nil, err
	}
	client, err := river.NewClient(riversqlite.New(nil), insertOnlyConfig())
	if err != nil {
		return nil, err
	}
	return &SQLiteOutbox{outboxEvents: ev, river: client}, nil
}

// Append implements consent.Outbox: recs are the records sqlitestore
// created in tx, in its order.
func (o *SQLiteOutbox) Append(ctx context.Context, tx *sql.Tx, recs []consent.Record) error {
	evs, err := o.consentEvents(recs)
	if err != nil {
		return err
	}
	_, err = o.add(ctx, tx, evs)
	return err
}

// add appends evs to the audit log and queues the deliveries of those new.
func (o *SQLiteOutbox) add(ctx context.Context, tx *sql.Tx, evs []Event) ([]bool, error) {
	created, err := appendAudit(ctx, sqliteAudit{tx}, evs)
	if err != nil || !o.deliver {
		return created, err
	}
	if jobs := deliveryJobs(evs, created); len(jobs) > 0 {
		// The "fast" insert: on SQLite the other one returns every column
		// of every job, decoding its JSON back to text, which profiled as
		// about a third of a status callback's CPU. The job ids it would
		// return are not needed, and delivery jobs are never unique (the
		// one case the fast insert handles worse). Workers are still
		// notified.
		if _, err := o.river.InsertManyFastTx(ctx, tx, jobs); err != nil {
			return nil, fmt.Errorf("relay: enqueue delivery: %w", err)
		}
	}
	return created, nil
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
	ob, err := NewSQLiteOutbox(cfg.Keyring, r.Delivering())
	if err != nil {
		return nil, err
	}
	r.b = &sqliteBackend{db: db, client: client, outbox: ob}
	r.newCallBatcher()
	return r, nil
}

type sqliteBackend struct {
	db     *sql.DB
	client *river.Client[*sql.Tx]
	outbox *SQLiteOutbox
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
	created, err := s.outbox.add(ctx, tx, evs)
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
