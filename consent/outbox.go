package consent

import "context"

// Outbox is where a decision leaves the consent store: the transactional
// outbox. Store.Record inserts a batch of records and, in the same
// transaction, hands the records it created to the outbox, which appends
// their relay events (the hash-chained audit entry and, with Zapier on, the
// delivery job). The records and their events commit or roll back together.
//
// The write path, webhook to outbox:
//
//	ivr: POST /voice/gather (and the other answers), /voice/status
//	  → Service.Decide, Service.RecordNoResponse
//	  → Store.Record: pgstore.Store.commit, sqlitestore.Store.commitTx
//	  → Outbox.Append, in that transaction: relay.Outbox, over relay/relaypg or relay/relaysqlite
//
// A call that ended undecided: its status callback's no_response record
// carries the call.completed event, which Append writes in the same
// transaction. A call decided before it ended has no new record to carry
// it: ivr.Config's CallCompleted hands it to relay.Relay.RecordCallCompleted,
// which writes it through the same audit append in a transaction of its own.
//
// Tx is the store's transaction type: pgx.Tx for pgstore, *sql.Tx for
// sqlitestore. It is an interface, not the relay's concrete writer
// (*relay.Outbox[Tx]), because the relay's tests run the relay over the real
// stores (relay imports the stores in its tests), so the stores cannot
// import the relay; the relay's writer over each driver is the
// implementation, and the stores' tests give their own.
type Outbox[Tx any] interface {
	// Append writes the events of recs, records created in tx (never one
	// found already stored), inside tx. An error rolls tx back. It must use
	// tx only: the embedded store's writer has one connection, and tx
	// holds it.
	Append(ctx context.Context, tx Tx, recs []Record) error
}
