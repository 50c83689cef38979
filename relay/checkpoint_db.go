package relay

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// cpDB is what checkpoints and their verification need of the relay's
// database: txq's single rows and statements, and multi-row queries. It
// wraps the backends' handles as they are, so the append path is untouched.
type cpDB interface {
	queryRow(ctx context.Context, query string, args ...any) rowScanner
	exec(ctx context.Context, query string, args ...any) error
	query(ctx context.Context, query string, args ...any) (cpRows, error)
}

type cpRows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

func (r *Relay) cpDB() (cpDB, error) {
	switch b := r.b.(type) {
	case *pgBackend:
		return pgCP{pgQ{b.pool}, b.pool}, nil
	case *sqliteBackend:
		return sqliteCP{sqlQ{b.db}, b.db}, nil
	}
	return nil, fmt.Errorf("relay: checkpoints: unknown backend %T", r.b)
}

type pgCP struct {
	pgQ
	pool *pgxpool.Pool
}

func (p pgCP) query(ctx context.Context, q string, args ...any) (cpRows, error) {
	return p.pool.Query(ctx, q, args...)
}

type sqliteCP struct {
	sqlQ
	db *sql.DB
}

func (s sqliteCP) query(ctx context.Context, q string, args ...any) (cpRows, error) {
	rows, err := s.db.QueryContext(ctx, rebind(q), args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}

// sqlRows gives *sql.Rows pgx's Close without a result (its error, if
// any, is the one Err already reports).
type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { _ = r.Rows.Close() }
