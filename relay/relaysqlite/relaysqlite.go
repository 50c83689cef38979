// Package relaysqlite is the relay's driver for the embedded SQLite
// database, over sqlitestore's writer handle (one connection, IMMEDIATE
// transactions): the relay's half that knows SQLite, as riversqlite is
// River's. It holds the audit log's append, the relay's migrations
// (relay_audit and its checkpoints, then River's tables) and River's SQLite
// driver.
//
//	d := relaysqlite.New(store.DB())
//	rel, err := relay.New(d, cfg)                         // deliveries, audit, checkpoints
//	ob, err := relay.NewOutbox(relaysqlite.New(nil), k, on) // sqlitestore.Options.Outbox
package relaysqlite

import (
	"context"
	"database/sql"
	"errors"
	"regexp"
	"strings"
	"sync"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riversqlite"

	"github.com/consentline/consentline/relay/relaydriver"
)

// Driver is the relay's SQLite driver.
type Driver struct {
	db    *sql.DB
	river *riversqlite.Driver
}

var _ relaydriver.Driver[*sql.Tx] = (*Driver)(nil)

// New returns the driver over db, sqlitestore's DB(). A nil db gives a
// driver that works only inside transactions it is handed: enough for an
// outbox writer, whose River client then only inserts.
func New(db *sql.DB) *Driver {
	return &Driver{db: db, river: riversqlite.New(db)}
}

// River implements relaydriver.Driver.
func (d *Driver) River() riverdriver.Driver[*sql.Tx] { return d.river }

// InsertJobs implements relaydriver.Driver with River's "fast" insert: on
// SQLite the other one returns every column of every job, decoding its JSON
// back to text, which profiled as about a third of a status callback's
// CPU. The job ids it would return are not needed, and delivery jobs are
// never unique (the one case the fast insert handles worse). Workers are
// still notified.
func (d *Driver) InsertJobs(ctx context.Context, client *river.Client[*sql.Tx], tx *sql.Tx, jobs []river.InsertManyParams) error {
	_, err := client.InsertManyFastTx(ctx, tx, jobs)
	return err
}

// Audit implements relaydriver.Driver.
func (d *Driver) Audit(tx *sql.Tx) relaydriver.AuditTx { return sqliteAudit{tx} }

// InTx implements relaydriver.Driver.
func (d *Driver) InTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// DB implements relaydriver.Driver.
func (d *Driver) DB() relaydriver.DB { return db{d.db} }

// QueueDepth implements relaydriver.Driver. River's job table is river_job.
func (d *Driver) QueueDepth(ctx context.Context, queue string, states []string) (map[string]int64, error) {
	args := []any{queue}
	for _, st := range states {
		args = append(args, st)
	}
	q := `SELECT state, count(*) FROM river_job WHERE queue = ? AND state IN (?` + strings.Repeat(", ?", len(states)-1) + `) GROUP BY state`
	rows, err := d.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[st] = n
	}
	return out, rows.Err()
}

var dollarN = regexp.MustCompile(`\$[0-9]+`)

// rebound caches rebind's results: the queries are a handful of constants,
// so there is no need to run the regexp again on every statement.
var rebound sync.Map // query -> rebound query

// rebind turns the relay's $N placeholders (written in order) into ?.
func rebind(q string) string {
	if r, ok := rebound.Load(q); ok {
		return r.(string)
	}
	r := dollarN.ReplaceAllString(q, "?")
	rebound.Store(q, r)
	return r
}

type db struct{ db *sql.DB }

func (d db) QueryRow(ctx context.Context, query string, args ...any) relaydriver.Row {
	return row{d.db.QueryRowContext(ctx, rebind(query), args...)}
}

func (d db) Exec(ctx context.Context, query string, args ...any) error {
	_, err := d.db.ExecContext(ctx, rebind(query), args...)
	return err
}

func (d db) Query(ctx context.Context, query string, args ...any) (relaydriver.Rows, error) {
	rows, err := d.db.QueryContext(ctx, rebind(query), args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}

// row maps database/sql's "no rows" to relaydriver.ErrNoRows.
type row struct{ r *sql.Row }

func (r row) Scan(dest ...any) error {
	err := r.r.Scan(dest...)
	if errors.Is(err, sql.ErrNoRows) {
		return relaydriver.ErrNoRows
	}
	return err
}

// sqlRows gives *sql.Rows pgx's Close without a result (its error, if
// any, is the one Err already reports).
type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { _ = r.Rows.Close() }
