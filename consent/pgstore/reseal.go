package pgstore

import (
	"context"
	"fmt"
	"strings"

	"github.com/consentline/consentline/consent"
	"github.com/jackc/pgx/v5"
)

var _ consent.Resealer = (*Store)(nil)

// SealedRows implements consent.Resealer. Keys compare with the column's
// collation, the same in the WHERE and the ORDER BY, so the walk neither
// skips nor repeats a row.
func (s *Store) SealedRows(ctx context.Context, table, after string, limit int) ([]consent.SealedRow, error) {
	l, ok := consent.LayoutOf(table)
	if !ok {
		return nil, fmt.Errorf("pgstore: sealed rows: unknown table %q", table)
	}
	cols := l.SelectColumns()
	rows, err := s.pool.Query(ctx, `SELECT `+strings.Join(cols, ", ")+` FROM `+table+
		` WHERE `+l.Key+` > $1 ORDER BY `+l.Key+` LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("pgstore: sealed rows of %s: %w", table, ctxCause(ctx, err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (consent.SealedRow, error) {
		vals := make([]string, len(cols))
		dest := make([]any, len(cols))
		for i := range vals {
			dest[i] = &vals[i]
		}
		if err := row.Scan(dest...); err != nil {
			return consent.SealedRow{}, err
		}
		return l.Row(table, vals), nil
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: sealed rows of %s: %w", table, ctxCause(ctx, err))
	}
	return out, nil
}

// Reseal implements consent.Resealer: one transaction, one compare-and-set
// UPDATE per value, pipelined in one round trip.
func (s *Store) Reseal(ctx context.Context, table string, updates []consent.SealedUpdate) (int, error) {
	if err := consent.CheckReseal(table, updates); err != nil {
		return 0, fmt.Errorf("pgstore: %w", err)
	}
	if len(updates) == 0 {
		return 0, nil
	}
	l, _ := consent.LayoutOf(table)
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("pgstore: reseal %s: %w", table, ctxCause(ctx, err))
	}
	defer tx.Rollback(ctx) // no-op after Commit
	b := &pgx.Batch{}
	for _, u := range updates {
		col := l.Columns[u.Field]
		b.Queue(`UPDATE `+table+` SET `+col+` = $1 WHERE `+l.Key+` = $2 AND `+col+` = $3`, string(u.New), u.Key, string(u.Old))
	}
	br := tx.SendBatch(ctx, b)
	replaced := 0
	for range updates {
		tag, err := br.Exec()
		if err != nil {
			br.Close()
			return 0, fmt.Errorf("pgstore: reseal %s: %w", table, ctxCause(ctx, err))
		}
		replaced += int(tag.RowsAffected())
	}
	if err := br.Close(); err != nil {
		return 0, fmt.Errorf("pgstore: reseal %s: %w", table, ctxCause(ctx, err))
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("pgstore: reseal %s: %w", table, ctxCause(ctx, err))
	}
	return replaced, nil
}
