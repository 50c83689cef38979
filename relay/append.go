package relay

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// chainHead is where a chain's next entry attaches.
type chainHead struct {
	seq  int64
	hash string
}

// auditTx is what appendAudit needs from one database's transaction.
type auditTx interface {
	// begin prepares appending to chains (ascending, distinct): on
	// PostgreSQL it takes their advisory locks, in that order. It returns
	// each chain's head (chains without entries are absent) and which of
	// ids are already in the log. Both are read after the locks are held, so
	// no other transaction appends to those chains until this one ends.
	begin(ctx context.Context, chains []int, ids []string) (map[int]chainHead, map[string]bool, error)
	insert(ctx context.Context, entries []AuditEntry) error
}

// appendAudit appends evs to the audit log inside the caller's transaction,
// each to its call's chain, and reports for each whether it was appended. An
// event whose id is already in the log, or earlier in evs, is left alone
// (false): that makes re-sent status callbacks harmless.
//
// However many events there are, each chain touched is locked once (in
// increasing chain order, so transactions appending to several chains at
// once, from any number of instances, cannot deadlock on each other) and its
// head read once; a chain's new entries follow each other in the order evs
// gives them.
func appendAudit(ctx context.Context, tx auditTx, evs []Event) ([]bool, error) {
	if len(evs) == 0 {
		return nil, nil
	}
	type item struct {
		i     int
		chain int
	}
	items := make([]item, len(evs))
	ids := make([]string, len(evs))
	for i, ev := range evs {
		items[i] = item{i, ChainOf(ev.CallSID)}
		ids[i] = ev.ID
	}
	slices.SortStableFunc(items, func(a, b item) int { return cmp.Compare(a.chain, b.chain) })
	chains := make([]int, 0, AuditChains)
	for _, it := range items {
		if len(chains) == 0 || chains[len(chains)-1] != it.chain {
			chains = append(chains, it.chain)
		}
	}
	heads, existing, err := tx.begin(ctx, chains, ids)
	if err != nil {
		return nil, err
	}
	created := make([]bool, len(evs))
	entries := make([]AuditEntry, 0, len(evs))
	for _, it := range items {
		ev := evs[it.i]
		if existing[ev.ID] {
			continue
		}
		existing[ev.ID] = true // a second copy in evs is a duplicate too
		h, ok := heads[it.chain]
		if !ok {
			h = chainHead{0, GenesisHash}
		}
		e, err := newEntry(it.chain, h.seq, h.hash, ev)
		if err != nil {
			return nil, err
		}
		heads[it.chain] = chainHead{e.Seq, e.Hash}
		entries = append(entries, e)
		created[it.i] = true
	}
	if err := tx.insert(ctx, entries); err != nil {
		return nil, fmt.Errorf("relay: audit append: %w", err)
	}
	return created, nil
}

// pgAudit appends on PostgreSQL. Each step is one round trip whatever the
// number of events: the locks and reads go in one pipelined batch, the
// entries in one INSERT. The statements' texts are constant, so pgx's
// statement cache prepares each once per connection.
type pgAudit struct{ tx pgx.Tx }

// pgHeads reads the chains' heads, each by a backward scan of the (chain,
// seq) primary key that stops at the first row.
const pgHeads = `SELECT c.chain, h.seq, h.hash
FROM unnest($1::integer[]) AS c(chain)
CROSS JOIN LATERAL (SELECT seq, hash FROM relay_audit WHERE relay_audit.chain = c.chain ORDER BY seq DESC LIMIT 1) h`

const pgExisting = `SELECT event_id FROM relay_audit WHERE event_id = ANY($1::text[])`

const pgInsertEntries = `INSERT INTO relay_audit (` + auditColumns + `)
SELECT * FROM unnest($1::integer[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])`

func (p pgAudit) begin(ctx context.Context, chains []int, ids []string) (map[int]chainHead, map[string]bool, error) {
	b := &pgx.Batch{}
	// One statement per lock: a pipeline runs them in order, which a single
	// SELECT over an array would not promise.
	for _, c := range chains {
		b.Queue(`SELECT pg_advisory_xact_lock($1)`, auditLockKey+int64(c))
	}
	b.Queue(pgExisting, ids)
	b.Queue(pgHeads, chains)
	br := p.tx.SendBatch(ctx, b)
	defer br.Close()
	for range chains {
		if _, err := br.Exec(); err != nil {
			return nil, nil, fmt.Errorf("relay: audit lock: %w", err)
		}
	}
	existing := map[string]bool{}
	rows, err := br.Query()
	if err != nil {
		return nil, nil, fmt.Errorf("relay: audit lookup: %w", err)
	}
	var id string
	if _, err := pgx.ForEachRow(rows, []any{&id}, func() error { existing[id] = true; return nil }); err != nil {
		return nil, nil, fmt.Errorf("relay: audit lookup: %w", err)
	}
	heads := map[int]chainHead{}
	rows, err = br.Query()
	if err != nil {
		return nil, nil, fmt.Errorf("relay: audit head: %w", err)
	}
	var (
		c int
		h chainHead
	)
	if _, err := pgx.ForEachRow(rows, []any{&c, &h.seq, &h.hash}, func() error { heads[c] = h; return nil }); err != nil {
		return nil, nil, fmt.Errorf("relay: audit head: %w", err)
	}
	return heads, existing, br.Close()
}

func (p pgAudit) insert(ctx context.Context, entries []AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	n := len(entries)
	chain, seq := make([]int32, n), make([]int64, n)
	id, typ, at := make([]string, n), make([]string, n), make([]string, n)
	body, prevHash, hash := make([]string, n), make([]string, n), make([]string, n)
	for i, e := range entries {
		chain[i], seq[i], id[i], typ[i], at[i] = int32(e.Chain), e.Seq, e.EventID, e.Type, e.OccurredAt
		body[i], prevHash[i], hash[i] = string(e.Event), e.PrevHash, e.Hash
	}
	_, err := p.tx.Exec(ctx, pgInsertEntries, chain, seq, id, typ, at, body, prevHash, hash)
	return err
}

// sqliteAudit appends on SQLite, inside the writer's IMMEDIATE transaction,
// which already keeps every other writer out: no locks to take. Its
// statements are prepared once per transaction and run once per chain or
// entry.
type sqliteAudit struct{ tx *sql.Tx }

func (s sqliteAudit) begin(ctx context.Context, chains []int, ids []string) (map[int]chainHead, map[string]bool, error) {
	heads := map[int]chainHead{}
	stmt, err := s.tx.PrepareContext(ctx, `SELECT seq, hash FROM relay_audit WHERE chain = ? ORDER BY seq DESC LIMIT 1`)
	if err != nil {
		return nil, nil, fmt.Errorf("relay: audit head: %w", err)
	}
	defer stmt.Close()
	for _, c := range chains {
		var h chainHead
		switch err := stmt.QueryRowContext(ctx, c).Scan(&h.seq, &h.hash); err {
		case nil:
			heads[c] = h
		case sql.ErrNoRows:
		default:
			return nil, nil, fmt.Errorf("relay: audit head: %w", err)
		}
	}
	// The ids as one JSON array parameter: the statement's text stays the
	// same however many there are.
	list, err := json.Marshal(ids)
	if err != nil {
		return nil, nil, err
	}
	rows, err := s.tx.QueryContext(ctx, `SELECT event_id FROM relay_audit WHERE event_id IN (SELECT value FROM json_each(?))`, string(list))
	if err != nil {
		return nil, nil, fmt.Errorf("relay: audit lookup: %w", err)
	}
	defer rows.Close()
	existing := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, nil, fmt.Errorf("relay: audit lookup: %w", err)
		}
		existing[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("relay: audit lookup: %w", err)
	}
	return heads, existing, nil
}

func (s sqliteAudit) insert(ctx context.Context, entries []AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	stmt, err := s.tx.PrepareContext(ctx, `INSERT INTO relay_audit (`+auditColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
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
