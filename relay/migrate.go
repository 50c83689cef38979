package relay

import (
	"embed"
	"io/fs"

	"github.com/consentline/consentline/internal/sqlmigrate"
)

// The relay owns its schema: relay_audit and relay_audit_checkpoints are
// created by the relay's own migrations, one directory per dialect, with
// their own history table, apart from the consent stores' (and from River's,
// which rivermigrate keeps). Add a change as the next NNNN_name.sql of both
// dialects; never edit one that has shipped.
//
//go:embed migrations/postgres/*.sql migrations/sqlite/*.sql
var migrationFiles embed.FS

// migrationHistory is the relay's history table, on both databases.
const migrationHistory = "relay_schema_migrations"

func migrations(dialect string) ([]sqlmigrate.Migration, error) {
	sub, err := fs.Sub(migrationFiles, "migrations/"+dialect)
	if err != nil {
		return nil, err
	}
	return sqlmigrate.Load(sub)
}

// adoptable are the relay's migrations that first shipped as the consent
// stores' (with the same SQL): a database migrated before the relay owned
// its schema has their tables and the stores' history rows, but no relay
// history. Such a migration is recorded as applied instead of run again
// when its table exists and the stores' schema_migrations holds the
// version that created it; both must hold, so a table made some other way
// is never taken for ours (its CREATE TABLE then fails, loudly). The
// stores' files for those versions are now empty, so on a fresh database
// their history rows come with no table, and the relay creates it.
var adoptable = []struct {
	version      int64  // the relay's migration
	name         string // and its name (a test checks both against the files)
	table        string // the table it creates
	storeVersion int64  // the consent stores' migration that created it
	storeName    string
}{
	{1, "audit", "relay_audit", 2, "relay_audit"},
	{2, "audit_checkpoints", "relay_audit_checkpoints", 4, "relay_audit_checkpoints"},
}
