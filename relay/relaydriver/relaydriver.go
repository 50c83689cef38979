// Package relaydriver is the interface between the relay and a database,
// as River's riverdriver is between River and its drivers: package relay
// holds everything that does not depend on the database (events, the hash
// chains, checkpoints, deliveries) and reaches the database only through a
// Driver; relaypg (PostgreSQL, pgx) and relaysqlite (the embedded SQLite)
// each implement it, with their migrations. The drivers import this package,
// not relay, so relay's own tests can run over both real drivers.
package relaydriver

import (
	"context"
	"errors"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
)

// Driver is one database, whose transactions are Tx (pgx.Tx, *sql.Tx). A
// driver built without a database handle (relaypg.New(nil)) is enough for
// an outbox writer, which only works inside transactions it is given.
type Driver[Tx any] interface {
	// River is River's driver on the same handle: the relay's River
	// client, and the outbox's insert-only one, are built on it.
	River() riverdriver.Driver[Tx]
	// InsertJobs queues jobs in tx through client, with whichever of
	// River's inserts suits the database.
	InsertJobs(ctx context.Context, client *river.Client[Tx], tx Tx, jobs []river.InsertManyParams) error
	// Audit appends to the audit log inside tx.
	Audit(tx Tx) AuditTx
	// InTx runs fn in a transaction of its own, committed if fn returns
	// nil and rolled back otherwise.
	InTx(ctx context.Context, fn func(Tx) error) error
	// DB runs statements outside any transaction (reads of the log,
	// checkpoints).
	DB() DB
	// QueueDepth counts the jobs of queue in each of states.
	QueueDepth(ctx context.Context, queue string, states []string) (map[string]int64, error)
}

// AuditEntry is one entry of the audit log, a row of relay_audit.
type AuditEntry struct {
	Chain      int
	Seq        int64 // 1, 2, ... within the chain
	EventID    string
	Type       string
	OccurredAt string
	Event      []byte // the relay event JSON, PII sealed
	PrevHash   string // hex
	Hash       string // hex
}

// Head is where a chain's next entry attaches.
type Head struct {
	Seq  int64
	Hash string
}

// AuditTx is what appending to the audit log needs from one transaction.
type AuditTx interface {
	// Begin prepares appending to chains (ascending, distinct): on
	// PostgreSQL it takes their advisory locks, in that order. It returns
	// each chain's head (chains without entries are absent) and which of
	// ids are already in the log. Both are read after the locks are held,
	// so no other transaction appends to those chains until this one ends.
	Begin(ctx context.Context, chains []int, ids []string) (map[int]Head, map[string]bool, error)
	// Existing reports which of ids are already in the log, read without
	// any chain lock (so another transaction may append one of them
	// before a later Begin reads them again under the locks).
	Existing(ctx context.Context, ids []string) (map[string]bool, error)
	// Insert writes entries.
	Insert(ctx context.Context, entries []AuditEntry) error
}

// DB runs statements written for PostgreSQL with $1, $2, ... placeholders,
// in order (the SQLite driver rebinds them to ?).
type DB interface {
	QueryRow(ctx context.Context, query string, args ...any) Row
	Exec(ctx context.Context, query string, args ...any) error
	Query(ctx context.Context, query string, args ...any) (Rows, error)
}

// Row is one row of a result; its Scan returns ErrNoRows for none.
type Row interface{ Scan(dest ...any) error }

// Rows is a result of any number of rows.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// ErrNoRows is Row.Scan's error when the query returned no row.
var ErrNoRows = errors.New("no rows")

// AuditColumns are relay_audit's columns in AuditEntry's order.
const AuditColumns = `chain, seq, event_id, type, occurred_at, event, prev_hash, hash`

// AuditLockKey is the base of the transaction-scoped advisory locks that
// serialize appends on PostgreSQL, one per chain (AuditLockKey + chain): two
// transactions must not both read the same chain head and chain onto it.
// The lock is held until COMMIT, so one lock for the whole log lined every
// decision's WAL flush up behind the previous one; per-chain locks let
// commits in different chains overlap. (SQLite has a single writer whose
// transactions begin IMMEDIATE, which serializes appends already.) The value
// is arbitrary but fixed; River hashes its own advisory lock keys, so a
// collision with the AuditChains keys from here up is as unlikely as any
// 64-bit one.
const AuditLockKey int64 = 0x72656c6179617564 // "relayaud"

// Adoptable are the relay's migrations that first shipped as the consent
// stores' (with the same SQL): a database migrated before the relay owned
// its schema has their tables and the stores' history rows, but no relay
// history. Such a migration is recorded as applied instead of run again
// when its table exists and the stores' schema_migrations holds the
// version that created it. Both must hold, so on a database whose store
// history never reached that version a table of the same name made some
// other way is not taken for ours (its CREATE TABLE then fails, loudly). The
// stores' files for those versions are now empty, so on a fresh database
// their history rows come with no table, and the relay creates it.
var Adoptable = []struct {
	Version      int64  // the relay's migration
	Name         string // and its name (the drivers' tests check both against their files)
	Table        string // the table it creates
	StoreVersion int64  // the consent stores' migration that created it
	StoreName    string
}{
	{1, "audit", "relay_audit", 2, "relay_audit"},
	{2, "audit_checkpoints", "relay_audit_checkpoints", 4, "relay_audit_checkpoints"},
}

// MigrationHistory is the relay's migration history table, on both
// databases (the stores keep schema_migrations, River its own).
const MigrationHistory = "relay_schema_migrations"
