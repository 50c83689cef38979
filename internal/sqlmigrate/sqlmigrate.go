// Package sqlmigrate reads versioned SQL migration files and applies them,
// each in one transaction with its row in a history table. The consent
// stores and the relay each own a set of files and a history table of their
// own; what a migration file is, which sets of files are valid and how one is
// applied are the same for all of them, so they are written once here. Who
// serializes migrators (a PostgreSQL advisory lock, SQLite's write lock) is
// the caller's business.
package sqlmigrate

import (
	"cmp"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strconv"
)

// Migration is one schema change: the file NNNN_name.sql.
type Migration struct {
	Version int64
	Name    string // the file name between "NNNN_" and ".sql"
	SQL     string
}

// File is the migration's file name, as it was read.
func (m Migration) File() string { return fmt.Sprintf("%04d_%s.sql", m.Version, m.Name) }

var fileName = regexp.MustCompile(`^([0-9]{4,})_([a-z0-9_]+)\.sql$`)

// Load reads every *.sql file at the root of fsys, sorted by version. Files
// named otherwise, and two files with one version, are an error rather than
// skipped, so a typo cannot quietly leave a change unapplied.
func Load(fsys fs.FS) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, err
	}
	var ms []Migration
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ".sql" {
			continue
		}
		m := fileName.FindStringSubmatch(e.Name())
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
		ms = append(ms, Migration{Version: version, Name: m[2], SQL: string(body)})
	}
	slices.SortFunc(ms, func(a, b Migration) int { return cmp.Compare(a.Version, b.Version) })
	for i := 1; i < len(ms); i++ {
		if ms[i].Version == ms[i-1].Version {
			return nil, fmt.Errorf("two migrations numbered %d: %s and %s", ms[i].Version, ms[i-1].Name, ms[i].Name)
		}
	}
	return ms, nil
}

// Embedded returns the migrations directory of an embed.FS (a package's
// `//go:embed migrations/*.sql`), as Load reads it.
func Embedded(files embed.FS) fs.FS {
	sub, err := fs.Sub(files, "migrations")
	if err != nil {
		panic(err) // the directory is embedded at build time
	}
	return sub
}
