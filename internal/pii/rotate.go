package pii

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/consentline/consentline/consent"
)

// DefaultRotateBatch is how many rows Rotate reads, and rewrites in one
// transaction, at a time: big enough that a million rows take a few
// thousand commits, small enough that a batch holds its locks (SQLite's one
// writer, PostgreSQL's row locks) for milliseconds while serve keeps
// writing.
const DefaultRotateBatch = 500

// RotateOptions tune Rotate.
type RotateOptions struct {
	// Batch is the rows per read and per transaction (DefaultRotateBatch).
	Batch int
	// AfterBatch, when set, is called after each batch is committed; an
	// error from it stops the rotation there (what the rest of the batches
	// would have done is left for the next run). For progress output, and
	// for tests that cut a run short.
	AfterBatch func(table string, rotated int) error
}

// RotateReport is what a rotation did.
type RotateReport struct {
	// Rotated values were re-sealed under the active key, bound to their
	// place.
	Rotated int
	// Current values were already under the active key and bound: skipped,
	// which is what makes re-running after a crash cheap and harmless.
	Current int
	// Changed values were replaced by a concurrent writer between the read
	// and the compare-and-set: the writer's value was kept (the census
	// says which key it is under).
	Changed int
	// Failed values could not be opened (unknown kid, altered, or bound to
	// another place); they are left as they are. Errors holds the first
	// few, naming table, row key, field and kid.
	Failed int
	Errors []error
}

// maxRotateErrors bounds RotateReport.Errors.
const maxRotateErrors = 10

// Rotate re-seals every sealed value in the store's SealedTables under k's
// active key, bound to its place: values under a retired key, and values
// sealed before bindings existed. It walks each table in key order, Batch
// rows at a time, each batch's rewrites in one transaction of their own,
// so a crash loses at most the batch in flight and a second run skips what
// the first finished. Rows are compare-and-set on the value read, so it is
// safe while serve runs. relay_audit is not touched (see
// consent.SealedTables).
//
// The returned error is the first store error or AfterBatch's; values that
// do not open are counted in the report, not returned, so one bad value
// does not stop the rest from rotating.
func Rotate(ctx context.Context, store consent.Resealer, k *Keyring, opts RotateOptions) (RotateReport, error) {
	batch := opts.Batch
	if batch <= 0 {
		batch = DefaultRotateBatch
	}
	var rep RotateReport
	for _, table := range consent.SealedTables {
		after := ""
		for {
			rows, err := store.SealedRows(ctx, table, after, batch)
			if err != nil {
				return rep, fmt.Errorf("pii: rotate %s: %w", table, err)
			}
			if len(rows) == 0 {
				break
			}
			after = rows[len(rows)-1].Key
			var updates []consent.SealedUpdate
			for _, row := range rows {
				for _, field := range slices.Sorted(maps.Keys(row.Values)) {
					old := row.Values[field]
					if old == "" {
						continue
					}
					place := row.At(field)
					if h, err := ReadHeader(old); err == nil && h.KID == k.kid && h.Binding == place {
						rep.Current++
						continue
					}
					// OpenFor, not OpenAny: a value bound to another place
					// was moved here, and re-sealing it for this place
					// would launder the move.
					plain, err := k.OpenFor(place, old)
					if err != nil {
						rep.fail(fmt.Errorf("%s row %s field %s: %w", table, row.Key, field, err))
						continue
					}
					sealed, err := k.SealFor(place, plain)
					if err != nil {
						return rep, err
					}
					updates = append(updates, consent.SealedUpdate{Key: row.Key, Field: field, Old: old, New: sealed})
				}
			}
			if len(updates) > 0 {
				n, err := store.Reseal(ctx, table, updates)
				if err != nil {
					return rep, fmt.Errorf("pii: rotate %s: %w", table, err)
				}
				rep.Rotated += n
				rep.Changed += len(updates) - n
				if opts.AfterBatch != nil {
					if err := opts.AfterBatch(table, n); err != nil {
						return rep, err
					}
				}
			}
			if len(rows) < batch {
				break
			}
		}
	}
	return rep, nil
}

func (r *RotateReport) fail(err error) {
	r.Failed++
	if len(r.Errors) < maxRotateErrors {
		r.Errors = append(r.Errors, err)
	}
}

// Census counts a store's sealed values by key, read from their headers
// without opening any.
type Census struct {
	// Values is every non-empty sealed value.
	Values int
	// ByKID counts values per kid; Retired is the sum of those not under
	// the active key (0 means no stored value needs a retired key any more).
	ByKID   map[string]int
	Retired int
	// Unbound counts values sealed before bindings existed (any key): they
	// open from any place until rotated.
	Unbound int
	// Unreadable counts values whose header does not parse.
	Unreadable int
}

// RetiredKIDs lists the kids other than the active one that values still
// use, sorted.
func (c Census) RetiredKIDs(active string) []string {
	var out []string
	for kid := range c.ByKID {
		if kid != active {
			out = append(out, kid)
		}
	}
	slices.Sort(out)
	return out
}

// TakeCensus walks the store's SealedTables and counts their values by kid.
// Rotate's report says what it did; the census says what is left, after
// whatever else wrote meanwhile (an instance still sealing under the old
// key during a rolling deploy shows up here).
func TakeCensus(ctx context.Context, store consent.Resealer, k *Keyring, batch int) (Census, error) {
	if batch <= 0 {
		batch = DefaultRotateBatch
	}
	c := Census{ByKID: map[string]int{}}
	for _, table := range consent.SealedTables {
		after := ""
		for {
			rows, err := store.SealedRows(ctx, table, after, batch)
			if err != nil {
				return c, fmt.Errorf("pii: census %s: %w", table, err)
			}
			for _, row := range rows {
				for _, v := range row.Values {
					if v == "" {
						continue
					}
					c.Values++
					h, err := ReadHeader(v)
					if err != nil || h.KID == "" {
						c.Unreadable++
						continue
					}
					c.ByKID[h.KID]++
					if h.KID != k.kid {
						c.Retired++
					}
					if h.Binding.IsZero() {
						c.Unbound++
					}
				}
			}
			if len(rows) < batch {
				break
			}
			after = rows[len(rows)-1].Key
		}
	}
	return c, nil
}
