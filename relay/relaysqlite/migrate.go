package relaysqlite

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"

	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/consentline/consentline/internal/sqlmigrate"
	"github.com/consentline/consentline/relay/relaydriver"
)

// migrationFiles are the relay's own schema changes on SQLite
// (relay_audit, relay_audit_checkpoints), with their own history
// (relaydriver.MigrationHistory), apart from the consent store's and
// River's. Add a change as the next NNNN_name.sql here and in relaypg;
// never edit one that has shipped.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations are the relay's migration files on SQLite.
func Migrations() fs.FS {
	return sqlmigrate.Embedded(migrationFiles)
}

// Migrate creates or upgrades the relay's tables in the embedded database
// (sqlitestore's DB(), whose transactions begin IMMEDIATE): its own (above)
// and River's job tables. Several processes may run it at once: each step
// holds SQLite's write lock.
func Migrate(ctx context.Context, db *sql.DB) error {
	ms, err := sqlmigrate.Load(Migrations())
	if err != nil {
		return fmt.Errorf("relay: migrate: %w", err)
	}
	if err := adopt(ctx, db); err != nil {
		return fmt.Errorf("relay: migrate: adopt the tables the consent store made: %w", err)
	}
	if err := sqlmigrate.ApplySQLite(ctx, db, relaydriver.MigrationHistory, ms); err != nil {
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

// adopt records as applied the relay migrations whose tables an older
// binary made with the consent store's migrations (relaydriver.Adoptable),
// in one write transaction.
func adopt(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+relaydriver.MigrationHistory+` (
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
	for _, a := range relaydriver.Adoptable {
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+relaydriver.MigrationHistory+` (version, name, applied_at)
SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?)
    AND EXISTS (SELECT 1 FROM schema_migrations WHERE version = ? AND name = ?)
ON CONFLICT (version) DO NOTHING`, a.Version, a.Name, sqlmigrate.Now(), a.Table, a.StoreVersion, a.StoreName); err != nil {
			return err
		}
	}
	return tx.Commit()
}
