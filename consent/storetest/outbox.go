package storetest

import (
	"context"

	"github.com/consentline/consentline/consent"
)

// OutboxFunc makes a function a consent.Outbox, for store tests that watch
// (or fail) what a store hands its outbox.
type OutboxFunc[Tx any] func(ctx context.Context, tx Tx, recs []consent.Record) error

// Append implements consent.Outbox.
func (f OutboxFunc[Tx]) Append(ctx context.Context, tx Tx, recs []consent.Record) error {
	return f(ctx, tx, recs)
}
