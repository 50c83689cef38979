package sqlmigrate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
)

// A history table records which migrations of one owner ran: the consent
// stores keep schema_migrations, the relay relay_schema_migrations. Each
// owner has its own, so two owners' version numbers never collide.
var tableName = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// ApplyPostgres applies the migrations of ms not yet recorded in the
// history table (created when missing), each in its own transaction
// together with its history row, so a failed migration leaves neither its
// changes nor a claim that it ran. A version recorded under another name is
// refused: the database's schema is then not what this binary believes.
//
// The caller serializes migrators (a session advisory lock held on conn).
func ApplyPostgres(ctx context.Context, conn *pgx.Conn, history string, ms []Migration) error {
	if !tableName.MatchString(history) {
		return fmt.Errorf("bad history table name %q", history)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+history+` (
    version    bigint      NOT NULL PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)`); err != nil {
		return fmt.Errorf("create %s: %w", history, err)
	}
	for _, m := range ms {
		if err := applyPostgres(ctx, conn, history, m); err != nil {
			return fmt.Errorf("migration %s: %w", m.File(), err)
		}
	}
	return nil
}

func applyPostgres(ctx context.Context, conn *pgx.Conn, history string, m Migration) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	// With ctx ended this fails and pgx closes the connection, which also
	// ends the session and its advisory lock.
	defer tx.Rollback(ctx)
	var applied string
	err = tx.QueryRow(ctx, `SELECT name FROM `+history+` WHERE version = $1`, m.Version).Scan(&applied)
	switch {
	case err == nil:
		return checkName(m, applied)
	case !errors.Is(err, pgx.ErrNoRows):
		return err
	}
	// No arguments: pgx sends it with the simple protocol, which runs a
	// file of several statements (or none: a comment-only file).
	if _, err := tx.Exec(ctx, m.SQL); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+history+` (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// ApplySQLite is ApplyPostgres for SQLite, on a handle whose transactions
// begin IMMEDIATE (sqlitestore's writer): each migration's transaction
// holds the write lock from its start, so a second migrator waits for it
// (busy_timeout) and then finds the version applied. applied_at is RFC 3339
// UTC with microseconds, as the store writes times.
func ApplySQLite(ctx context.Context, db *sql.DB, history string, ms []Migration) error {
	if !tableName.MatchString(history) {
		return fmt.Errorf("bad history table name %q", history)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+history+` (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at TEXT    NOT NULL
) STRICT`); err != nil {
		return fmt.Errorf("create %s: %w", history, err)
	}
	for _, m := range ms {
		if err := applySQLite(ctx, db, history, m); err != nil {
			return fmt.Errorf("migration %s: %w", m.File(), err)
		}
	}
	return nil
}

func applySQLite(ctx context.Context, db *sql.DB, history string, m Migration) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	// Checked inside the write transaction: another process may have
	// applied it since we last looked.
	var applied string
	err = tx.QueryRowContext(ctx, `SELECT name FROM `+history+` WHERE version = ?`, m.Version).Scan(&applied)
	switch {
	case err == nil:
		return checkName(m, applied)
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO `+history+` (version, name, applied_at) VALUES (?, ?, ?)`,
		m.Version, m.Name, Now()); err != nil {
		return err
	}
	return tx.Commit()
}

// Now is the time a SQLite history row is written with: RFC 3339 UTC with
// microseconds, the stores' time format.
func Now() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000000Z") }

func checkName(m Migration, applied string) error {
	if applied != m.Name {
		// Two different changes under one number: the database's schema is
		// not what this binary believes, so refuse to run on it.
		return fmt.Errorf("version %d is recorded as %q, this binary has %q", m.Version, applied, m.Name)
	}
	return nil
}
