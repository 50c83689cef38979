package sqlitestore

import (
	"context"
	"fmt"
	"strings"

	"github.com/consentline/consentline/consent"
)

var _ consent.Resealer = (*Store)(nil)

// SealedRows implements consent.Resealer. It reads on a reader connection,
// so a rotation's reads never wait behind the writer.
func (s *Store) SealedRows(ctx context.Context, table, after string, limit int) ([]consent.SealedRow, error) {
	l, ok := consent.LayoutOf(table)
	if !ok {
		return nil, fmt.Errorf("sqlitestore: sealed rows: unknown table %q", table)
	}
	cols := l.SelectColumns()
	rows, err := s.read.QueryContext(ctx, `SELECT `+strings.Join(cols, ", ")+` FROM `+table+
		` WHERE `+l.Key+` > ? ORDER BY `+l.Key+` LIMIT ?`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: sealed rows of %s: %w", table, ctxCause(ctx, err))
	}
	defer rows.Close()
	var out []consent.SealedRow
	for rows.Next() {
		vals := make([]string, len(cols))
		dest := make([]any, len(cols))
		for i := range vals {
			dest[i] = &vals[i]
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("sqlitestore: sealed rows of %s: %w", table, err)
		}
		out = append(out, l.Row(table, vals))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitestore: sealed rows of %s: %w", table, ctxCause(ctx, err))
	}
	return out, nil
}

// Reseal implements consent.Resealer: one IMMEDIATE transaction on the
// writer (so it queues with serve's group commits rather than failing
// busy), one compare-and-set UPDATE per value.
func (s *Store) Reseal(ctx context.Context, table string, updates []consent.SealedUpdate) (int, error) {
	if err := consent.CheckReseal(table, updates); err != nil {
		return 0, fmt.Errorf("sqlitestore: %w", err)
	}
	if len(updates) == 0 {
		return 0, nil
	}
	l, _ := consent.LayoutOf(table)
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("sqlitestore: reseal %s: %w", table, ctxCause(ctx, err))
	}
	defer tx.Rollback()
	replaced := 0
	for _, u := range updates {
		col := l.Columns[u.Field]
		res, err := tx.ExecContext(ctx, `UPDATE `+table+` SET `+col+` = ? WHERE `+l.Key+` = ? AND `+col+` = ?`,
			string(u.New), u.Key, string(u.Old))
		if err != nil {
			return 0, fmt.Errorf("sqlitestore: reseal %s: %w", table, ctxCause(ctx, err))
		}
		n, err := res.RowsAffected()
		if err != nil {
			return 0, fmt.Errorf("sqlitestore: reseal %s: %w", table, err)
		}
		replaced += int(n)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("sqlitestore: reseal %s: %w", table, ctxCause(ctx, err))
	}
	return replaced, nil
}
