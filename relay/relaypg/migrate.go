package relaypg

import (
	"context"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/consentline/consentline/internal/sqlmigrate"
	"github.com/consentline/consentline/relay/relaydriver"
)

// migrationFiles are the relay's own schema changes on PostgreSQL
// (relay_audit, relay_audit_checkpoints), with their own history
// (relaydriver.MigrationHistory), apart from the consent store's and
// River's. Add a change as the next NNNN_name.sql here and in relaysqlite;
// never edit one that has shipped.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations are the relay's migration files on PostgreSQL.
func Migrations() fs.FS {
	return sqlmigrate.Embedded(migrationFiles)
}

// Migrate creates or upgrades the relay's tables: its own (above) and
// River's job tables.
//
// Replicas starting together all run it: a session advisory lock, held on
// one connection of the pool, makes them take turns, so the later ones find
// nothing left to do. (Not one transaction: River's own migrations commit
// per version, and one of them adds an enum value it then uses.)
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	ms, err := sqlmigrate.Load(Migrations())
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
	if err := adopt(ctx, conn.Conn()); err != nil {
		return fmt.Errorf("relay: migrate: adopt the tables the consent store made: %w", err)
	}
	if err := sqlmigrate.ApplyPostgres(ctx, conn.Conn(), relaydriver.MigrationHistory, ms); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("relay: river migrations: %w", err)
	}
	return nil
}

// migrationLockKey serializes the relay's migrations (its own and River's)
// across replicas. The value spells "rivermig", the key River's migrations
// alone were taken under before the relay had its own.
const migrationLockKey int64 = 0x72697665726d6967

// adopt records as applied the relay migrations whose tables an older
// binary made with the consent store's migrations (relaydriver.Adoptable).
func adopt(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+relaydriver.MigrationHistory+` (
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
	for _, a := range relaydriver.Adoptable {
		// One statement: the relay's row is written only if its table is
		// there and the store's history says the store's migration made it.
		if _, err := conn.Exec(ctx, `INSERT INTO `+relaydriver.MigrationHistory+` (version, name)
SELECT $1, $2 WHERE to_regclass($3) IS NOT NULL
    AND EXISTS (SELECT 1 FROM schema_migrations WHERE version = $4 AND name = $5)
ON CONFLICT (version) DO NOTHING`, a.Version, a.Name, a.Table, a.StoreVersion, a.StoreName); err != nil {
			return err
		}
	}
	return nil
}
