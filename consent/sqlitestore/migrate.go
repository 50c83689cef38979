package sqlitestore

import (
	"cmp"
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strconv"
	"time"
)

// migrationFiles are this dialect's schema changes, applied in version order.
// Add a change as the next NNNN_name.sql; never edit one that has shipped.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int64
	name    string // the file name between "NNNN_" and ".sql"
	sql     string
}

var migrationName = regexp.MustCompile(`^([0-9]{4,})_([a-z0-9_]+)\.sql$`)

// loadMigrations reads every *.sql file at the root of fsys, sorted by
// version. Files named otherwise are an error rather than skipped, so a typo
// cannot quietly leave a change unapplied.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ".sql" {
			continue
		}
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migration file %q: want NNNN_name.sql (lower case)", e.Name())
		}
		version, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || version == 0 {
			return nil, fmt.Errorf("migration file %q: bad version", e.Name())
		}
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: version, name: m[2], sql: string(body)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return cmp.Compare(a.version, b.version) })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("two migrations numbered %d: %s and %s", ms[i].version, ms[i-1].name, ms[i].name)
		}
	}
	return ms, nil
}

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
	ms, err := loadMigrations(fsys)
	if err != nil {
		return fmt.Errorf("sqlitestore: migrate: %w", err)
	}
	if _, err := s.write.ExecContext(ctx, createHistory); err != nil {
		return fmt.Errorf("sqlitestore: migrate: create schema_migrations: %w", ctxCause(ctx, err))
	}
	for _, m := range ms {
		if err := s.apply(ctx, m); err != nil {
			return fmt.Errorf("sqlitestore: migration %04d_%s: %w", m.version, m.name, ctxCause(ctx, err))
		}
	}
	return nil
}

func (s *Store) apply(ctx context.Context, m migration) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// Checked inside the write transaction: another process may have applied
	// it since we last looked.
	var applied string
	err = tx.QueryRowContext(ctx, `SELECT name FROM schema_migrations WHERE version = ?`, m.version).Scan(&applied)
	switch {
	case err == nil:
		if applied != m.name {
			// Two different changes under one number: the database's schema
			// is not what this binary believes, so refuse to run on it.
			return fmt.Errorf("version %d is recorded as %q, this binary has %q", m.version, applied, m.name)
		}
		return nil
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
		m.version, m.name, formatTime(time.Now())); err != nil {
		return err
	}
	return tx.Commit()
}
