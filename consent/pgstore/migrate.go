package pgstore

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/consentline/consentline/internal/sqlmigrate"
)

// migrationFiles are this dialect's schema changes, applied in version order.
// Add a change as the next NNNN_name.sql; never edit one that has shipped.
// Each runs in a transaction, so statements that cannot (CREATE INDEX
// CONCURRENTLY) do not belong here.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

func embeddedMigrations() fs.FS {
	return sqlmigrate.Embedded(migrationFiles)
}

// migrationLockKey is the pg_advisory_lock key that serializes migrators on
// one database. Advisory locks are per database, so it only has to differ
// from other keys used on this one (River's are derived from hashes of its
// own names). The digits spell "consentl".
const migrationLockKey int64 = 0x636f6e73656e746c

// Migrate applies the embedded migrations not yet recorded in
// schema_migrations, each in its own transaction together with its history
// row, so a failed migration leaves neither its changes nor a claim that it
// ran. It holds a session-level pg_advisory_lock on one dedicated connection
// throughout, so instances starting at the same time migrate one after the
// other and the later ones find nothing to do. Waiting for the lock ends
// with ctx.
func (s *Store) Migrate(ctx context.Context) error {
	return s.migrate(ctx, embeddedMigrations())
}

func (s *Store) migrate(ctx context.Context, fsys fs.FS) (err error) {
	ms, err := sqlmigrate.Load(fsys)
	if err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("pgstore: migrate: %w", err)
	}
	// The lock belongs to the session, so the connection must never go back
	// to the pool still holding it: when unlocking fails, or locking failed
	// in a way that leaves us unsure (ctx canceled mid-query), the
	// connection is closed instead, which releases the lock server-side.
	locked := false
	defer func() {
		if locked {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if _, uerr := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, migrationLockKey); uerr == nil {
				conn.Release()
				return
			}
		}
		if err != nil || locked {
			destroy(conn)
			return
		}
		conn.Release()
	}()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrationLockKey); err != nil {
		return fmt.Errorf("pgstore: migrate: take migration lock: %w", ctxCause(ctx, err))
	}
	locked = true

	if err := sqlmigrate.ApplyPostgres(ctx, conn.Conn(), "schema_migrations", ms); err != nil {
		return fmt.Errorf("pgstore: %w", ctxCause(ctx, err))
	}
	return nil
}

// destroy closes a pooled connection so the pool discards it.
func destroy(conn *pgxpool.Conn) {
	c := conn.Hijack()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = c.Close(ctx)
}
