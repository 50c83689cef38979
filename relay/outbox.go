package relay

import (
	"errors"
	"time"

	"github.com/riverqueue/river"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
)

// The outbox: a consent store hands the records a batch created to its
// driver's outbox writer (PostgresOutbox, SQLiteOutbox: consent.Outbox
// implementations) inside the batch's transaction, and the writer appends
// their audit entries and, when Zapier delivery is on, their River delivery
// jobs there. So a record, its audit entry and its delivery job commit or
// roll back together. Each writer builds only its own driver's River client,
// insert-only: it needs no database handle (River inserts through the
// transaction it is given), so it is built before the store it is passed to.

// outboxEvents is what both drivers' writers share: sealing records into
// events and choosing their delivery jobs.
type outboxEvents struct {
	k       *pii.Keyring
	deliver bool
}

func newOutboxEvents(k *pii.Keyring, deliver bool) (outboxEvents, error) {
	if k == nil {
		return outboxEvents{}, errors.New("relay: outbox needs a keyring")
	}
	return outboxEvents{k: k, deliver: deliver}, nil
}

// insertOnlyConfig is the River config of a writer's client: a nil pool is
// River's documented way to allow the *Tx inserts and nothing else. The
// client still wakes the workers: it sends River's insert notification
// (pg_notify on PostgreSQL, River's notification table on SQLite) in the
// transaction, but at most once per FetchCooldown; at River's default
// (100 ms) a job committed inside that window waited for a later insert or
// the 1 s poll.
func insertOnlyConfig() *river.Config {
	return &river.Config{FetchCooldown: insertNotifyCooldown}
}

func (o outboxEvents) consentEvents(recs []consent.Record) ([]Event, error) {
	evs := make([]Event, len(recs))
	for i, rec := range recs {
		ev, err := NewConsentEvent(rec, o.k)
		if err != nil {
			return nil, err
		}
		evs[i] = ev
	}
	return evs, nil
}

// deliveryJobs are the River jobs for the events appended (created) now.
func deliveryJobs(evs []Event, created []bool) []river.InsertManyParams {
	var jobs []river.InsertManyParams
	for i, ev := range evs {
		if created[i] {
			jobs = append(jobs, river.InsertManyParams{Args: DeliverArgs{EventID: ev.ID}})
		}
	}
	return jobs
}

// insertNotifyCooldown is the shortest time between two insert
// notifications from an outbox writer (River's minimum FetchCooldown).
const insertNotifyCooldown = time.Millisecond
