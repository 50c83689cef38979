package pgstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5"
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
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		panic(err) // the directory is embedded at build time
	}
	return sub
}

// migrationLockKey is the pg_advisory_lock key that serializes migrators on
// one database. Advisory locks are per database, so it only has to differ
// from other keys used on this one (River's are derived from hashes of its
// own names). The digits spell "consentl".
const migrationLockKey int64 = 0x636f6e73656e746c

const createHistory = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version    bigint      NOT NULL PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)`

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

	if _, err := conn.Exec(ctx, createHistory); err != nil {
		return fmt.Errorf("pgstore: migrate: create schema_migrations: %w", ctxCause(ctx, err))
	}
	for _, m := range ms {
		if err := apply(ctx, conn.Conn(), m); err != nil {
			return fmt.Errorf("pgstore: migration %s: %w", m.File(), ctxCause(ctx, err))
		}
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

func apply(ctx context.Context, conn *pgx.Conn, m sqlmigrate.Migration) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	// With ctx ended this fails and pgx closes the connection, which also
	// ends the session and its advisory lock.
	defer tx.Rollback(ctx)
	var applied string
	err = tx.QueryRow(ctx, `SELECT name FROM schema_migrations WHERE version = $1`, m.Version).Scan(&applied)
	switch {
	case err == nil:
		if applied != m.Name {
			// Two different changes under one number: the database's schema
			// is not what this binary believes, so refuse to run on it.
			return fmt.Errorf("version %d is recorded as %q, this binary has %q", m.Version, applied, m.Name)
		}
		return nil
	case !errors.Is(err, pgx.ErrNoRows):
		return err
	}
	// No arguments: pgx sends it with the simple protocol, which runs a
	// file of several statements.
	if _, err := tx.Exec(ctx, m.SQL); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
