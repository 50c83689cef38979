// Package relaypg is the relay's PostgreSQL driver, over a pgx pool (the
// one pgstore opens): the relay's half that knows PostgreSQL, as riverpgxv5
// is River's. It holds the audit log's append (advisory locks per chain, one
// pipelined round trip), the relay's migrations (relay_audit and its
// checkpoints, then River's tables) and River's pgx driver.
//
//	d := relaypg.New(pool)
//	rel, err := relay.New(d, cfg)                      // deliveries, audit, checkpoints
//	ob, err := relay.NewOutbox(relaypg.New(nil), k, on) // pgstore.Options.Outbox
package relaypg

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/consentline/consentline/relay/relaydriver"
)

// Driver is the relay's PostgreSQL driver.
type Driver struct {
	pool  *pgxpool.Pool
	river *riverpgxv5.Driver
}

var _ relaydriver.Driver[pgx.Tx] = (*Driver)(nil)

// New returns the driver over pool. A nil pool gives a driver that works
// only inside transactions it is handed: enough for an outbox writer, whose
// River client then only inserts (River's own convention for riverpgxv5).
func New(pool *pgxpool.Pool) *Driver {
	return &Driver{pool: pool, river: riverpgxv5.New(pool)}
}

// River implements relaydriver.Driver.
func (d *Driver) River() riverdriver.Driver[pgx.Tx] { return d.river }

// InsertJobs implements relaydriver.Driver with River's InsertManyTx.
func (d *Driver) InsertJobs(ctx context.Context, client *river.Client[pgx.Tx], tx pgx.Tx, jobs []river.InsertManyParams) error {
	_, err := client.InsertManyTx(ctx, tx, jobs)
	return err
}

// Audit implements relaydriver.Driver.
func (d *Driver) Audit(tx pgx.Tx) relaydriver.AuditTx { return pgAudit{tx} }

// InTx implements relaydriver.Driver.
func (d *Driver) InTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, d.pool, fn)
}

// DB implements relaydriver.Driver.
func (d *Driver) DB() relaydriver.DB { return db{d.pool} }

// QueueDepth implements relaydriver.Driver. River's job table is river_job.
func (d *Driver) QueueDepth(ctx context.Context, queue string, states []string) (map[string]int64, error) {
	rows, err := d.pool.Query(ctx, `SELECT state::text, count(*) FROM river_job WHERE queue = $1 AND state::text = ANY($2) GROUP BY state`, queue, states)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	var st string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&st, &n}, func() error {
		out[st] = n
		return nil
	})
	return out, err
}

type db struct{ pool *pgxpool.Pool }

func (d db) QueryRow(ctx context.Context, query string, args ...any) relaydriver.Row {
	return row{d.pool.QueryRow(ctx, query, args...)}
}

func (d db) Exec(ctx context.Context, query string, args ...any) error {
	_, err := d.pool.Exec(ctx, query, args...)
	return err
}

func (d db) Query(ctx context.Context, query string, args ...any) (relaydriver.Rows, error) {
	return d.pool.Query(ctx, query, args...)
}

// row maps pgx's "no rows" to relaydriver.ErrNoRows.
type row struct{ r pgx.Row }

func (r row) Scan(dest ...any) error {
	err := r.r.Scan(dest...)
	if errors.Is(err, pgx.ErrNoRows) {
		return relaydriver.ErrNoRows
	}
	return err
}
