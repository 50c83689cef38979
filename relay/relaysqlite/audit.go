package relaysqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"

	"github.com/consentline/consentline/relay/relaydriver"
)

// sqliteAudit appends on SQLite, inside the writer's IMMEDIATE transaction,
// which already keeps every other writer out: no locks to take. Its
// statements are prepared once per transaction and run once per chain or
// entry.
type sqliteAudit struct{ tx *sql.Tx }

func (s sqliteAudit) Begin(ctx context.Context, chains []int, ids []string) (map[int]relaydriver.Head, map[string]bool, error) {
	heads := map[int]relaydriver.Head{}
	stmt, err := s.tx.PrepareContext(ctx, `SELECT seq, hash FROM relay_audit WHERE chain = ? ORDER BY seq DESC LIMIT 1`)
	if err != nil {
		return nil, nil, fmt.Errorf("relay: audit head: %w", err)
	}
	defer stmt.Close()
	for _, c := range chains {
		var h relaydriver.Head
		switch err := stmt.QueryRowContext(ctx, c).Scan(&h.Seq, &h.Hash); err {
		case nil:
			heads[c] = h
		case sql.ErrNoRows:
		default:
			return nil, nil, fmt.Errorf("relay: audit head: %w", err)
		}
	}
	existing, err := s.Existing(ctx, ids)
	if err != nil {
		return nil, nil, err
	}
	return heads, existing, nil
}

func (s sqliteAudit) Existing(ctx context.Context, ids []string) (map[string]bool, error) {
	// The ids as one JSON array parameter: the statement's text stays the
	// same however many there are.
	list, err := json.Marshal(ids)
	if err != nil {
		return nil, err
	}
	rows, err := s.tx.QueryContext(ctx, `SELECT event_id FROM relay_audit WHERE event_id IN (SELECT value FROM json_each(?))`, string(list))
	if err != nil {
		return nil, fmt.Errorf("relay: audit lookup: %w", err)
	}
	defer rows.Close()
	existing := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("relay: audit lookup: %w", err)
		}
		existing[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("relay: audit lookup: %w", err)
	}
	return existing, nil
}

func (s sqliteAudit) Insert(ctx context.Context, entries []relaydriver.AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	stmt, err := s.tx.PrepareContext(ctx, `INSERT INTO relay_audit (`+relaydriver.AuditColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for _, e := range entries {
		if _, err := stmt.ExecContext(ctx, e.Chain, e.Seq, e.EventID, e.Type, e.OccurredAt, string(e.Event), e.PrevHash, e.Hash); err != nil {
			return err
		}
	}
	return nil
}
