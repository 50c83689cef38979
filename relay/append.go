package relay

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/consentline/consentline/relay/relaydriver"
)

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
func appendAudit(ctx context.Context, tx relaydriver.AuditTx, evs []Event) ([]bool, error) {
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
	heads, existing, err := tx.Begin(ctx, chains, ids)
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
			h = relaydriver.Head{Seq: 0, Hash: GenesisHash}
		}
		e, err := newEntry(it.chain, h.Seq, h.Hash, ev)
		if err != nil {
			return nil, err
		}
		heads[it.chain] = relaydriver.Head{Seq: e.Seq, Hash: e.Hash}
		entries = append(entries, e)
		created[it.i] = true
	}
	if err := tx.Insert(ctx, entries); err != nil {
		return nil, fmt.Errorf("relay: audit append: %w", err)
	}
	return created, nil
}
