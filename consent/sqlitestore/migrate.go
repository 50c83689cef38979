package sqlitestore

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/consentline/consentline/internal/sqlmigrate"
)

// migrationFiles are this dialect's schema changes, applied in version order.
// Add a change as the next NNNN_name.sql; never edit one that has shipped.
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

const createHistory = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at TEXT    NOT NULL
) STRICT`

// Migrate applies the embedded migrations not yet recorded in
// schema_migrations, each in its own transaction together with its history
// row, so a failed migration leaves neither its changes nor a claim that it
// ran. It is safe to call at every start, and from several processes at
// once: each migration's transaction begins IMMEDIATE, so a second migrator
// waits for the write lock (busy_timeout) and then finds the version applied.
func (s *Store) Migrate(ctx context.Context) error {
	return s.migrate(ctx, embeddedMigrations())
}

func (s *Store) migrate(ctx context.Context, fsys fs.FS) error {
	ms, err := sqlmigrate.Load(fsys)
	if err != nil {
		return fmt.Errorf("sqlitestore: migrate: %w", err)
	}
	if _, err := s.write.ExecContext(ctx, createHistory); err != nil {
		return fmt.Errorf("sqlitestore: migrate: create schema_migrations: %w", ctxCause(ctx, err))
	}
	for _, m := range ms {
		if err := s.apply(ctx, m); err != nil {
			return fmt.Errorf("sqlitestore: migration %s: %w", m.File(), ctxCause(ctx, err))
		}
	}
	return nil
}

func (s *Store) apply(ctx context.Context, m sqlmigrate.Migration) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// Checked inside the write transaction: another process may have applied
	// it since we last looked.
	var applied string
	err = tx.QueryRowContext(ctx, `SELECT name FROM schema_migrations WHERE version = ?`, m.Version).Scan(&applied)
	switch {
	case err == nil:
		if applied != m.Name {
			// Two different changes under one number: the database's schema
			// is not what this binary believes, so refuse to run on it.
			return fmt.Errorf("version %d is recorded as %q, this binary has %q", m.Version, applied, m.Name)
		}
		return nil
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
		m.Version, m.Name, formatTime(time.Now())); err != nil {
		return err
	}
	return tx.Commit()
}
