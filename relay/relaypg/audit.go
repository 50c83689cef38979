package relaypg

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/consentline/consentline/relay/relaydriver"
)

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

const pgInsertEntries = `INSERT INTO relay_audit (` + relaydriver.AuditColumns + `)
SELECT * FROM unnest($1::integer[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])`

func (p pgAudit) Begin(ctx context.Context, chains []int, ids []string) (map[int]relaydriver.Head, map[string]bool, error) {
	b := &pgx.Batch{}
	// Plan the look-ups for their parameters every time. pgx prepares
	// each statement once per connection, and PostgreSQL then settles on
	// a generic plan after five executions: planned while relay_audit was
	// still nearly empty (a fresh deployment), that plan scans the whole
	// table, and keeps scanning it as the log grows until statistics
	// change, which needs an ANALYZE that autovacuum may be late with or
	// (autovacuum off) never run. Measured: a connection on a 280,000-entry
	// log read 1.6 billion rows in 11,000 scans, and decisions slowed to a
	// crawl. SET LOCAL lasts until this transaction ends, and rides in the
	// same round trip.
	b.Queue(`SET LOCAL plan_cache_mode = force_custom_plan`)
	// One statement per lock: a pipeline runs them in order, which a single
	// SELECT over an array would not promise.
	for _, c := range chains {
		b.Queue(`SELECT pg_advisory_xact_lock($1)`, relaydriver.AuditLockKey+int64(c))
	}
	b.Queue(pgExisting, ids)
	b.Queue(pgHeads, chains)
	br := p.tx.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, nil, fmt.Errorf("relay: audit plan mode: %w", err)
	}
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
	heads := map[int]relaydriver.Head{}
	rows, err = br.Query()
	if err != nil {
		return nil, nil, fmt.Errorf("relay: audit head: %w", err)
	}
	var (
		c int
		h relaydriver.Head
	)
	if _, err := pgx.ForEachRow(rows, []any{&c, &h.Seq, &h.Hash}, func() error { heads[c] = h; return nil }); err != nil {
		return nil, nil, fmt.Errorf("relay: audit head: %w", err)
	}
	return heads, existing, br.Close()
}

// Existing runs pgExisting on its own, before any chain lock, as an
// unnamed statement: planned for its parameters every time (see Begin).
func (p pgAudit) Existing(ctx context.Context, ids []string) (map[string]bool, error) {
	rows, err := p.tx.Query(ctx, pgExisting, pgx.QueryExecModeExec, ids)
	if err != nil {
		return nil, fmt.Errorf("relay: audit lookup: %w", err)
	}
	existing := map[string]bool{}
	var id string
	if _, err := pgx.ForEachRow(rows, []any{&id}, func() error { existing[id] = true; return nil }); err != nil {
		return nil, fmt.Errorf("relay: audit lookup: %w", err)
	}
	return existing, nil
}

func (p pgAudit) Insert(ctx context.Context, entries []relaydriver.AuditEntry) error {
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
