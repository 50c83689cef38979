package relay

import (
	"context"
	"database/sql"
	"errors"
	"regexp"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// txq is the little the audit log needs from a transaction, over both
// database/sql (SQLite) and pgx (PostgreSQL). Queries are written with $N
// placeholders, in order, and rebound to ? for SQLite.
type txq interface {
	queryRow(ctx context.Context, query string, args ...any) rowScanner
	exec(ctx context.Context, query string, args ...any) error
	postgres() bool
}

type rowScanner interface{ Scan(dest ...any) error }

var errNoRows = errors.New("no rows")

var dollarN = regexp.MustCompile(`\$[0-9]+`)

// rebound caches rebind's results: the queries are a handful of constants,
// so there is no need to run the regexp again on every statement.
var rebound sync.Map // query -> rebound query

func rebind(q string) string {
	if r, ok := rebound.Load(q); ok {
		return r.(string)
	}
	r := dollarN.ReplaceAllString(q, "?")
	rebound.Store(q, r)
	return r
}

type sqlQ struct {
	q interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
		ExecContext(context.Context, string, ...any) (sql.Result, error)
	}
}

func (s sqlQ) queryRow(ctx context.Context, query string, args ...any) rowScanner {
	return noRowsRow{s.q.QueryRowContext(ctx, rebind(query), args...)}
}

func (s sqlQ) exec(ctx context.Context, query string, args ...any) error {
	_, err := s.q.ExecContext(ctx, rebind(query), args...)
	return err
}

func (sqlQ) postgres() bool { return false }

type pgQ struct {
	q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
		Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
	}
}

func (p pgQ) queryRow(ctx context.Context, query string, args ...any) rowScanner {
	return noRowsRow{p.q.QueryRow(ctx, query, args...)}
}

func (p pgQ) exec(ctx context.Context, query string, args ...any) error {
	_, err := p.q.Exec(ctx, query, args...)
	return err
}

func (pgQ) postgres() bool { return true }

// noRowsRow maps both drivers' "no rows" errors to errNoRows.
type noRowsRow struct{ r rowScanner }

func (n noRowsRow) Scan(dest ...any) error {
	err := n.r.Scan(dest...)
	if errors.Is(err, sql.ErrNoRows) || errors.Is(err, pgx.ErrNoRows) {
		return errNoRows
	}
	return err
}

// auditLockKey is the base of the transaction-scoped advisory locks that
// serialize appends on PostgreSQL, one per chain (auditLockKey + chain): two
// transactions must not both read the same chain head and chain onto it.
// The lock is held until COMMIT, so one lock for the whole log lined every
// decision's WAL flush up behind the previous one; per-chain locks let
// commits in different chains overlap. (SQLite has a single writer whose
// transactions begin IMMEDIATE, which serializes appends already.) The value
// is arbitrary but fixed; River hashes its own advisory lock keys, so a
// collision with the AuditChains keys from here up is as unlikely as any
// 64-bit one.
const auditLockKey int64 = 0x72656c6179617564 // "relayaud"

const auditColumns = `chain, seq, event_id, type, occurred_at, event, prev_hash, hash`

func scanEntry(r rowScanner) (AuditEntry, error) {
	var e AuditEntry
	var body string
	if err := r.Scan(&e.Chain, &e.Seq, &e.EventID, &e.Type, &e.OccurredAt, &body, &e.PrevHash, &e.Hash); err != nil {
		return AuditEntry{}, err
	}
	e.Event = []byte(body)
	return e, nil
}

// ErrEventNotFound is returned when no audit entry has the event id.
var ErrEventNotFound = errors.New("relay: no such event in the audit log")

func loadEntry(ctx context.Context, q txq, eventID string) (AuditEntry, error) {
	e, err := scanEntry(q.queryRow(ctx, `SELECT `+auditColumns+` FROM relay_audit WHERE event_id = $1`, eventID))
	if errors.Is(err, errNoRows) {
		return AuditEntry{}, ErrEventNotFound
	}
	return e, err
}
