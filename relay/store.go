package relay

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"

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

func rebind(q string) string { return dollarN.ReplaceAllString(q, "?") }

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

// appendAudit appends ev to its call's chain inside the caller's transaction
// and reports whether it did; an event id already in the log is left alone
// (created false), which makes re-sent status callbacks harmless.
func appendAudit(ctx context.Context, q txq, ev Event) (AuditEntry, bool, error) {
	chain := ChainOf(ev.CallSID)
	if q.postgres() {
		// Taken before the lookup below: a re-sent event has the same call
		// SID, so the same chain and lock, and waits here for the first to
		// commit instead of also finding nothing.
		if err := q.exec(ctx, `SELECT pg_advisory_xact_lock($1)`, auditLockKey+int64(chain)); err != nil {
			return AuditEntry{}, false, fmt.Errorf("relay: audit lock: %w", err)
		}
	}
	if existing, err := scanEntry(q.queryRow(ctx, `SELECT `+auditColumns+` FROM relay_audit WHERE event_id = $1`, ev.ID)); err == nil {
		return existing, false, nil
	} else if !errors.Is(err, errNoRows) {
		return AuditEntry{}, false, fmt.Errorf("relay: audit lookup: %w", err)
	}
	prevSeq, prevHash := int64(0), GenesisHash
	err := q.queryRow(ctx, `SELECT seq, hash FROM relay_audit WHERE chain = $1 ORDER BY seq DESC LIMIT 1`, chain).Scan(&prevSeq, &prevHash)
	if err != nil && !errors.Is(err, errNoRows) {
		return AuditEntry{}, false, fmt.Errorf("relay: audit head: %w", err)
	}
	e, err := newEntry(chain, prevSeq, prevHash, ev)
	if err != nil {
		return AuditEntry{}, false, err
	}
	if err := q.exec(ctx, `INSERT INTO relay_audit (`+auditColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		e.Chain, e.Seq, e.EventID, e.Type, e.OccurredAt, string(e.Event), e.PrevHash, e.Hash); err != nil {
		return AuditEntry{}, false, fmt.Errorf("relay: audit append: %w", err)
	}
	return e, true, nil
}

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
