package sqlitestore

import (
	"context"
	"embed"
	"fmt"
	"io/fs"

	"github.com/consentline/consentline/internal/sqlmigrate"
)

// migrationFiles are this dialect's schema changes, applied in version order.
// Add a change as the next NNNN_name.sql; never edit one that has shipped.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

func embeddedMigrations() fs.FS {
	return sqlmigrate.Embedded(migrationFiles)
}

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
	if err := sqlmigrate.ApplySQLite(ctx, s.write, "schema_migrations", ms); err != nil {
		return fmt.Errorf("sqlitestore: %w", ctxCause(ctx, err))
	}
	return nil
}
