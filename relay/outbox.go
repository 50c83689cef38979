package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/riverqueue/river"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/relay/relaydriver"
)

// Outbox is the relay's outbox writer, the consent.Outbox a store calls:
// a consent store hands it the records a batch created, inside the batch's
// transaction, and Append writes their audit entries and, when Zapier
// delivery is on, their River delivery jobs there. So a record, its audit
// entry and its delivery job commit or roll back together.
//
// Tx is the driver's transaction: Outbox[pgx.Tx] over relaypg is
// pgstore's Options.Outbox, Outbox[*sql.Tx] over relaysqlite is
// sqlitestore's.
type Outbox[Tx any] struct {
	d       relaydriver.Driver[Tx]
	river   *river.Client[Tx] // insert-only
	k       *pii.Keyring
	deliver bool
}

// NewOutbox returns the outbox writer for driver d, sealing with k. deliver
// says whether Zapier delivery is on (ZAPIER_WEBHOOK_URL set); when it is
// off only the audit entries are written. It builds only d's River client,
// insert-only, and needs no database handle (River inserts through the
// transaction it is given), so d may be the driver's New(nil) and the
// writer built before the store it is passed to.
func NewOutbox[Tx any](d relaydriver.Driver[Tx], k *pii.Keyring, deliver bool) (*Outbox[Tx], error) {
	if k == nil {
		return nil, errors.New("relay: outbox needs a keyring")
	}
	client, err := river.NewClient(d.River(), insertOnlyConfig())
	if err != nil {
		return nil, fmt.Errorf("relay: outbox river client: %w", err)
	}
	return &Outbox[Tx]{d: d, river: client, k: k, deliver: deliver}, nil
}

// Append implements consent.Outbox: recs are the records the store created
// in tx, in its order. A record that closes its call (EndsCall: the
// no_response of a status callback) brings the call's call.completed event
// with it, so a call that ended undecided costs one transaction, not two.
func (o *Outbox[Tx]) Append(ctx context.Context, tx Tx, recs []consent.Record) error {
	evs, err := o.consentEvents(recs)
	if err != nil {
		return err
	}
	var closing []string // the call.completed events' ids
	for _, rec := range recs {
		if EndsCall(rec) {
			ev, err := NewCallEndedEvent(rec, o.k)
			if err != nil {
				return err
			}
			evs = append(evs, ev)
			closing = append(closing, ev.ID)
		}
	}
	if !o.deliver {
		_, err = o.add(ctx, tx, evs)
		return err
	}
	// The delivery jobs go in before the audit append, not after: the
	// append holds its chains' locks until the transaction commits, and
	// every statement moved ahead of it is one round trip less that other
	// transactions appending to those chains wait for (pg_stat_statements
	// put those waits first among the status callback's statements). A
	// new record's event is new (its id is the record's); a call.completed
	// event may be in the log already (the relay's RecordCallCompleted for
	// a call decided before it ended), so those are looked up first,
	// outside the locks, and only the absent ones get a job.
	present := map[string]bool{}
	if len(closing) > 0 {
		if present, err = o.d.Audit(tx).Existing(ctx, closing); err != nil {
			return err
		}
	}
	queued := make([]bool, len(evs))
	for i, ev := range evs {
		queued[i] = !present[ev.ID]
	}
	if jobs := deliveryJobs(evs, queued); len(jobs) > 0 {
		if err := o.d.InsertJobs(ctx, o.river, tx, jobs); err != nil {
			return fmt.Errorf("relay: enqueue delivery: %w", err)
		}
	}
	created, err := appendAudit(ctx, o.d.Audit(tx), evs)
	if err != nil {
		return err
	}
	for i, c := range created {
		if !c && queued[i] {
			// Appended by another transaction since the look-up: its
			// delivery job was queued above. Roll it all back; retried,
			// the look-up finds it.
			return fmt.Errorf("relay: event %s was appended to the audit log meanwhile", evs[i].ID)
		}
	}
	return nil
}

// add appends evs to the audit log and queues the deliveries of those new.
func (o *Outbox[Tx]) add(ctx context.Context, tx Tx, evs []Event) ([]bool, error) {
	created, err := appendAudit(ctx, o.d.Audit(tx), evs)
	if err != nil || !o.deliver {
		return created, err
	}
	if jobs := deliveryJobs(evs, created); len(jobs) > 0 {
		if err := o.d.InsertJobs(ctx, o.river, tx, jobs); err != nil {
			return nil, fmt.Errorf("relay: enqueue delivery: %w", err)
		}
	}
	return created, nil
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

func (o *Outbox[Tx]) consentEvents(recs []consent.Record) ([]Event, error) {
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

// deliveryJobs are the River jobs for the events marked in want (those
// appended now, or about to be).
func deliveryJobs(evs []Event, want []bool) []river.InsertManyParams {
	var jobs []river.InsertManyParams
	for i, ev := range evs {
		if want[i] {
			jobs = append(jobs, river.InsertManyParams{Args: DeliverArgs{EventID: ev.ID}})
		}
	}
	return jobs
}

// insertNotifyCooldown is the shortest time between two insert
// notifications from an outbox writer (River's minimum FetchCooldown).
const insertNotifyCooldown = time.Millisecond
