package relay

import (
	"context"
	"errors"

	"github.com/riverqueue/river"

	"github.com/consentline/consentline/relay/relaydriver"
)

// backend is the Relay's database: a relaydriver.Driver and the River client
// built on it, behind one interface that does not depend on the driver's
// transaction type.
type backend interface {
	entry(ctx context.Context, eventID string) (AuditEntry, error)
	walk(ctx context.Context, fn func(AuditEntry) error) error
	// record appends events (and queues their deliveries) in one
	// transaction, reporting for each whether it was new.
	record(ctx context.Context, evs []Event) ([]bool, error)
	enqueue(ctx context.Context, eventID string) (int64, error)
	list(ctx context.Context, p *river.JobListParams) ([]Delivery, error)
	start(ctx context.Context) error
	stop(ctx context.Context) error
	stopAndCancel(ctx context.Context) error
	// queueDepth counts the delivery jobs in each River state.
	queueDepth(ctx context.Context, states []string) (map[string]int64, error)
	// db runs the checkpoints' statements.
	db() relaydriver.DB
}

type driverBackend[Tx any] struct {
	d      relaydriver.Driver[Tx]
	client *river.Client[Tx]
	outbox *Outbox[Tx]
}

func (b *driverBackend[Tx]) entry(ctx context.Context, id string) (AuditEntry, error) {
	return loadEntry(ctx, b.d.DB(), id)
}

func (b *driverBackend[Tx]) walk(ctx context.Context, fn func(AuditEntry) error) error {
	rows, err := b.d.DB().Query(ctx, `SELECT `+relaydriver.AuditColumns+` FROM relay_audit ORDER BY chain, seq`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return rows.Err()
}

func (b *driverBackend[Tx]) record(ctx context.Context, evs []Event) ([]bool, error) {
	var created []bool
	err := b.d.InTx(ctx, func(tx Tx) error {
		var err error
		created, err = b.outbox.add(ctx, tx, evs)
		return err
	})
	return created, err
}

func (b *driverBackend[Tx]) enqueue(ctx context.Context, eventID string) (int64, error) {
	res, err := b.client.Insert(ctx, DeliverArgs{EventID: eventID}, nil)
	if err != nil {
		return 0, err
	}
	return res.Job.ID, nil
}

func (b *driverBackend[Tx]) list(ctx context.Context, p *river.JobListParams) ([]Delivery, error) {
	res, err := b.client.JobList(ctx, p)
	if err != nil {
		return nil, err
	}
	return deliveries(res.Jobs), nil
}

func (b *driverBackend[Tx]) start(ctx context.Context) error { return b.client.Start(ctx) }
func (b *driverBackend[Tx]) stop(ctx context.Context) error  { return b.client.Stop(ctx) }
func (b *driverBackend[Tx]) stopAndCancel(ctx context.Context) error {
	return b.client.StopAndCancel(ctx)
}

func (b *driverBackend[Tx]) queueDepth(ctx context.Context, states []string) (map[string]int64, error) {
	return b.d.QueueDepth(ctx, QueueName, states)
}

func (b *driverBackend[Tx]) db() relaydriver.DB { return b.d.DB() }

func scanEntry(r relaydriver.Row) (AuditEntry, error) {
	var e AuditEntry
	var body string
	if err := r.Scan(&e.Chain, &e.Seq, &e.EventID, &e.Type, &e.OccurredAt, &body, &e.PrevHash, &e.Hash); err != nil {
		return AuditEntry{}, err
	}
	e.Event = []byte(body)
	return e, nil
}

// ErrEventNotFound is returned when no audit entry has the event id.
var ErrEventNotFound = errors.New("relay: no such event in the audit log")

func loadEntry(ctx context.Context, db relaydriver.DB, eventID string) (AuditEntry, error) {
	e, err := scanEntry(db.QueryRow(ctx, `SELECT `+relaydriver.AuditColumns+` FROM relay_audit WHERE event_id = $1`, eventID))
	if errors.Is(err, relaydriver.ErrNoRows) {
		return AuditEntry{}, ErrEventNotFound
	}
	return e, err
}
