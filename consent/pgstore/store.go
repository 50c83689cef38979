// Package pgstore is the PostgreSQL consent.Store, for deployments with
// DATABASE_URL set and several instances sharing one database, through a
// pgx connection pool.
//
// Every statement runs under the caller's context, so a webhook's deadline
// bounds the time spent here; exactly-once rests on the UNIQUE (call_sid,
// script_id) constraint, not on any lock held between statements.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
)

// cancelGrace bounds how long a call outlives its context while the server
// acknowledges the cancellation of its statement.
const cancelGrace = 500 * time.Millisecond

// Options configure Open.
type Options struct {
	// Migrate applies pending migrations before Open returns. Without it the
	// caller runs Migrate (e.g. from a separate "migrate" command).
	Migrate bool

	// AfterInsert, when set, is called inside the transaction that created a
	// record, right after the insert; it is not called when Record found an
	// existing record. An error from it rolls the whole transaction back, so
	// the record and whatever the hook wrote (e.g. an outbox row, or a River
	// job inserted with InsertTx) are stored together or not at all.
	AfterInsert func(ctx context.Context, tx pgx.Tx, rec consent.Record) error
}

// Store is the PostgreSQL consent.Store. Its methods are safe for concurrent
// use.
type Store struct {
	pool        *pgxpool.Pool
	afterInsert func(ctx context.Context, tx pgx.Tx, rec consent.Record) error
}

var _ consent.Store = (*Store)(nil)

// Open connects to databaseURL (a postgres:// URL or key=value string; pool
// settings such as pool_max_conns may be given in it) and checks the server
// answers before returning, so a wrong URL stops the process at start.
func Open(ctx context.Context, databaseURL string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		// pgx's parse errors already hide the password.
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	// By default pgx answers a canceled context by closing the connection,
	// and the server, not noticing until it next writes, finishes the
	// statement: a Record that timed out waiting on a row lock could still
	// commit after reporting failure. Asking the server to cancel the
	// statement first makes an error mean "not written" (short of the
	// inherent race with completion, in which case the result arrives and is
	// reported); the connection is closed only if the server has not
	// answered within cancelGrace.
	cfg.ConnConfig.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: cancelGrace}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	s := &Store{pool: pool, afterInsert: opts.AfterInsert}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore: connect to %s:%d/%s: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, ctxCause(ctx, err))
	}
	if opts.Migrate {
		if err := s.Migrate(ctx); err != nil {
			pool.Close()
			return nil, err
		}
	}
	return s, nil
}

// Pool returns the connection pool, for code that shares the database (e.g.
// River's riverpgxv5 driver).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// ctxCause makes a context's end visible to errors.Is when pgx reports only
// its consequence (e.g. a connection closed while canceling a query).
func ctxCause(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	return err
}

const recordColumns = `id, call_sid, script_id, script_version, script_language, script_sha256,
    decision, source, confidence, barge_in, disclosure_heard_ms, patient_ref,
    from_sealed, to_sealed, transcript_sealed, decided_at`

// The conflict target names only (call_sid, script_id): a clash on the id
// primary key is a real error (two records given one id), not a duplicate.
// created_at is the server's now(), the commit-side clock.
const insertRecord = `INSERT INTO consent_records (` + recordColumns + `)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT (call_sid, script_id) DO NOTHING`

const selectRecord = `SELECT ` + recordColumns + ` FROM consent_records WHERE call_sid = $1 AND script_id = $2`

func insertArgs(rec consent.Record) []any {
	return []any{
		rec.ID, rec.CallSID, rec.Script.ID, rec.Script.Version, rec.Script.Language, rec.Script.SHA256,
		string(rec.Decision), string(rec.Source), rec.Confidence, rec.BargeIn, rec.DisclosureHeardMS, rec.PatientRef,
		string(rec.From), string(rec.To), string(rec.Transcript), rec.DecidedAt,
	}
}

func scanRecord(row pgx.Row) (consent.Record, error) {
	var (
		r                    consent.Record
		decision, source     string
		from, to, transcript string
	)
	err := row.Scan(&r.ID, &r.CallSID, &r.Script.ID, &r.Script.Version, &r.Script.Language, &r.Script.SHA256,
		&decision, &source, &r.Confidence, &r.BargeIn, &r.DisclosureHeardMS, &r.PatientRef,
		&from, &to, &transcript, &r.DecidedAt)
	if err != nil {
		return consent.Record{}, err
	}
	r.Decision, r.Source = consent.Decision(decision), consent.Source(source)
	r.From, r.To, r.Transcript = consent.Sealed(from), consent.Sealed(to), consent.Sealed(transcript)
	// pgx returns timestamptz in the local zone.
	r.DecidedAt = r.DecidedAt.UTC()
	return r, nil
}

// Record implements consent.Store.
func (s *Store) Record(ctx context.Context, rec consent.Record) (consent.Record, bool, error) {
	rec, err := rec.Normalized()
	if err != nil {
		return consent.Record{}, false, fmt.Errorf("pgstore: record: %w", err)
	}
	// A conflict means the other row is committed (INSERT waits for an
	// in-flight conflicting transaction to end), so reading it back finds it,
	// unless that row was deleted in between; a few tries cover that.
	for range 3 {
		created, err := s.insert(ctx, rec)
		if err != nil {
			return consent.Record{}, false, fmt.Errorf("pgstore: record %s/%s: %w", rec.CallSID, rec.Script.ID, ctxCause(ctx, err))
		}
		if created {
			return rec, true, nil
		}
		existing, err := scanRecord(s.pool.QueryRow(ctx, selectRecord, rec.CallSID, rec.Script.ID))
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return consent.Record{}, false, fmt.Errorf("pgstore: record %s/%s: read existing: %w", rec.CallSID, rec.Script.ID, ctxCause(ctx, err))
		}
		return existing, false, nil
	}
	return consent.Record{}, false, fmt.Errorf("pgstore: record %s/%s: conflicting record vanished three times", rec.CallSID, rec.Script.ID)
}

// insert inserts rec unless (call_sid, script_id) exists, reporting whether
// it did.
func (s *Store) insert(ctx context.Context, rec consent.Record) (bool, error) {
	if s.afterInsert == nil {
		// A single statement is its own transaction: one round trip instead
		// of three.
		tag, err := s.pool.Exec(ctx, insertRecord, insertArgs(rec)...)
		return tag.RowsAffected() == 1, err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx) // no-op after Commit
	tag, err := tx.Exec(ctx, insertRecord, insertArgs(rec)...)
	if err != nil || tag.RowsAffected() == 0 {
		return false, err
	}
	if err := s.afterInsert(ctx, tx, rec); err != nil {
		return false, fmt.Errorf("after insert: %w", err)
	}
	return true, tx.Commit(ctx)
}

// Get implements consent.Store.
func (s *Store) Get(ctx context.Context, callSID, scriptID string) (consent.Record, error) {
	rec, err := scanRecord(s.pool.QueryRow(ctx, selectRecord, callSID, scriptID))
	if errors.Is(err, pgx.ErrNoRows) {
		return consent.Record{}, consent.ErrNotFound
	}
	if err != nil {
		return consent.Record{}, fmt.Errorf("pgstore: get %s/%s: %w", callSID, scriptID, ctxCause(ctx, err))
	}
	return rec, nil
}

// Secret implements consent.Store.
func (s *Store) Secret(ctx context.Context, name string, generate func() (consent.Sealed, error)) (consent.Sealed, error) {
	v, err := s.secret(ctx, name)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("pgstore: secret %q: %w", name, ctxCause(ctx, err))
	}
	gen, err := generate()
	if err != nil {
		return "", fmt.Errorf("pgstore: secret %q: generate: %w", name, err)
	}
	if err := gen.Check("secret " + name); err != nil {
		return "", fmt.Errorf("pgstore: %w", err)
	}
	// First writer wins: a concurrent caller's value may already be there,
	// and then ours is dropped and theirs returned. The read is a new
	// statement, so it sees the winner's committed row.
	if _, err := s.pool.Exec(ctx, `INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`,
		name, string(gen)); err != nil {
		return "", fmt.Errorf("pgstore: secret %q: %w", name, ctxCause(ctx, err))
	}
	v, err = s.secret(ctx, name)
	if err != nil {
		return "", fmt.Errorf("pgstore: secret %q: %w", name, ctxCause(ctx, err))
	}
	return v, nil
}

func (s *Store) secret(ctx context.Context, name string) (consent.Sealed, error) {
	var v string
	err := s.pool.QueryRow(ctx, `SELECT value FROM secrets WHERE name = $1`, name).Scan(&v)
	return consent.Sealed(v), err
}

// CallStarted implements consent.Store.
func (s *Store) CallStarted(ctx context.Context, c consent.StartedCall) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO started_calls
    (call_sid, script_id, script_version, script_language, script_sha256, from_sealed, to_sealed, started_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (call_sid) DO UPDATE SET script_id = excluded.script_id, script_version = excluded.script_version,
    script_language = excluded.script_language, script_sha256 = excluded.script_sha256`,
		c.CallSID, c.Script.ID, c.Script.Version, c.Script.Language, c.Script.SHA256, string(c.From), string(c.To), c.StartedAt)
	if err != nil {
		return fmt.Errorf("pgstore: call started %s: %w", c.CallSID, ctxCause(ctx, err))
	}
	return nil
}

// StartedCall implements consent.Store.
func (s *Store) StartedCall(ctx context.Context, callSID string) (consent.StartedCall, error) {
	c := consent.StartedCall{CallSID: callSID}
	var from, to string
	err := s.pool.QueryRow(ctx, `SELECT script_id, script_version, script_language, script_sha256, from_sealed, to_sealed, started_at
FROM started_calls WHERE call_sid = $1`, callSID).Scan(&c.Script.ID, &c.Script.Version, &c.Script.Language, &c.Script.SHA256, &from, &to, &c.StartedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return consent.StartedCall{}, consent.ErrNotFound
	}
	if err != nil {
		return consent.StartedCall{}, fmt.Errorf("pgstore: started call %s: %w", callSID, ctxCause(ctx, err))
	}
	c.From, c.To, c.StartedAt = consent.Sealed(from), consent.Sealed(to), c.StartedAt.UTC()
	return c, nil
}

// Unsettled implements consent.Store.
func (s *Store) Unsettled(ctx context.Context, startedBefore time.Time, limit int) ([]consent.StartedCall, error) {
	rows, err := s.pool.Query(ctx, `SELECT c.call_sid, c.script_id, c.script_version, c.script_language, c.script_sha256,
    c.from_sealed, c.to_sealed, c.started_at
FROM started_calls c
WHERE c.started_at < $1 AND NOT EXISTS (SELECT 1 FROM consent_records r WHERE r.call_sid = c.call_sid)
ORDER BY c.started_at LIMIT $2`, startedBefore, limit)
	if err != nil {
		return nil, fmt.Errorf("pgstore: unsettled calls: %w", ctxCause(ctx, err))
	}
	calls, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (consent.StartedCall, error) {
		var c consent.StartedCall
		var from, to string
		err := row.Scan(&c.CallSID, &c.Script.ID, &c.Script.Version, &c.Script.Language, &c.Script.SHA256, &from, &to, &c.StartedAt)
		c.From, c.To, c.StartedAt = consent.Sealed(from), consent.Sealed(to), c.StartedAt.UTC()
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: unsettled calls: %w", ctxCause(ctx, err))
	}
	return calls, nil
}

// Ping reports whether the server answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("pgstore: ping: %w", ctxCause(ctx, err))
	}
	return nil
}

// Close closes the pool, waiting for connections in use to be returned. It is
// safe to call more than once.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}
