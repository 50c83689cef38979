// Package pgstore is the PostgreSQL consent.Store, for deployments with
// DATABASE_URL set and several instances sharing one database, through a
// pgx connection pool.
//
// Every statement runs under the caller's context, so a webhook's deadline
// bounds the time spent here; exactly-once rests on the UNIQUE (call_sid,
// script_id) constraint, not on any lock held between statements.
//
// # Group commit
//
// Record calls arriving together share one transaction (internal/groupcommit):
// a committer takes every Record waiting, up to MaxBatch, and inserts them
// all, with the relay events of those created (Options.Outbox), in one
// transaction, so a burst pays for one COMMIT and WAL flush per batch rather
// than per decision. Up to ConcurrentBatches such transactions run at once. A batch runs under a context of its own that ends when
// every caller in it has given up (then the statement is canceled as below);
// a caller that gives up while still queued is never written. A caller whose
// context ends while its batch commits waits cancelGrace for the outcome,
// like a canceled statement whose result was already on its way.
package pgstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/groupcommit"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
)

// cancelGrace bounds how long a call outlives its context while the server
// acknowledges the cancellation of its statement.
const cancelGrace = 500 * time.Millisecond

// Options configure Open.
type Options struct {
	// Migrate applies pending migrations before Open returns. Without it the
	// caller runs Migrate (e.g. from a separate "migrate" command).
	Migrate bool

	// Outbox, when set, writes the relay events of the records a batch
	// created (serve gives it the relay's writer, relay.NewOutbox over
	// relaypg: audit entries and River delivery jobs), inside the batch's
	// transaction, right after the inserts, with the records ordered
	// by call SID and script id. An error from it rolls the whole
	// transaction back, so the records and their events are stored together
	// or not at all; the batch's records are then committed again one at a
	// time, so a record the outbox cannot handle fails alone. Nil: records
	// only (the store's own tests).
	Outbox consent.Outbox[pgx.Tx]

	// MaxBatch is the most records one transaction takes (default
	// groupcommit.DefaultMaxBatch).
	MaxBatch int
	// ConcurrentBatches is how many batches may commit at once, each on its
	// own connection (default 2; 1 with a pool of fewer than 4). One alone
	// made a lightly loaded instance slower than before group commit: every
	// Record waited for the transaction ahead of it, where PostgreSQL would
	// have run both and shared their WAL flush. Two let one batch's COMMIT
	// overlap the next one's inserts. Many more (half of a 32-connection
	// pool) measured slower than either: the queue splits into batches of
	// one or two, each taking the same audit chain locks.
	ConcurrentBatches int

	// Metrics, when set, records each record transaction's duration and
	// batch size (nil: none).
	Metrics *telemetry.Metrics
}

// Store is the PostgreSQL consent.Store. Its methods are safe for concurrent
// use.
type Store struct {
	pool    *pgxpool.Pool
	outbox  consent.Outbox[pgx.Tx]
	records *groupcommit.Committer[consent.Record, stored]
}

// stored is one Record's outcome.
type stored struct {
	rec     consent.Record
	created bool
}

var _ consent.Store = (*Store)(nil)

// Open connects to databaseURL (a postgres:// URL or key=value string; pool
// settings such as pool_max_conns may be given in it) and checks the server
// answers before returning, so a wrong URL stops the process at start.
func Open(ctx context.Context, databaseURL string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		// pgx's parse errors already hide the password.
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	// By default pgx answers a canceled context by closing the connection,
	// and the server, not noticing until it next writes, finishes the
	// statement: a Record that timed out waiting on a row lock could still
	// commit after reporting failure. Asking the server to cancel the
	// statement first makes an error mean "not written" (short of the
	// inherent race with completion, in which case the result arrives and is
	// reported); the connection is closed only if the server has not
	// answered within cancelGrace.
	cfg.ConnConfig.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: cancelGrace}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	s := &Store{pool: pool, outbox: opts.Outbox}
	concurrent := opts.ConcurrentBatches
	if concurrent <= 0 {
		concurrent = min(2, max(1, int(cfg.MaxConns)/2))
	}
	s.records = groupcommit.New(s.commit, groupcommit.Options{MaxBatch: opts.MaxBatch, Grace: cancelGrace, Concurrent: concurrent,
		Observe: func(items int, took time.Duration, err error) {
			opts.Metrics.StoreCommit(telemetry.CommitRecords, items, took, err)
		}})
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore: connect to %s:%d/%s: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, ctxCause(ctx, err))
	}
	if opts.Migrate {
		if err := s.Migrate(ctx); err != nil {
			pool.Close()
			return nil, err
		}
	}
	return s, nil
}

// Pool returns the connection pool, for code that shares the database (e.g.
// River's riverpgxv5 driver).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// ctxCause makes a context's end visible to errors.Is when pgx reports only
// its consequence (e.g. a connection closed while canceling a query).
func ctxCause(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	return err
}

const recordColumns = `id, call_sid, script_id, script_version, script_language, script_sha256,
    decision, source, confidence, barge_in, disclosure_heard_ms, patient_ref,
    from_sealed, to_sealed, transcript_sealed, decided_at, timing, must_hear_complete`

// insertRecords inserts a batch of records in one statement, one array
// per column, and returns the keys of those inserted. The conflict target
// names only (call_sid, script_id): a clash on the id primary key is a
// real error (two records given one id), not a duplicate. created_at is
// the server's now(), the commit-side clock.
//
// One statement, not one per record: the rows go in the arrays' order
// (the batch's lock order, see commit) all the same, and PostgreSQL runs
// the executor once instead of once per row. Measured with
// pg_stat_statements on the status callback benchmark, one INSERT per
// record cost 69 µs of server time a row.
const insertRecords = `INSERT INTO consent_records (` + recordColumns + `)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::double precision[], $10::boolean[], $11::bigint[], $12::text[],
    $13::text[], $14::text[], $15::text[], $16::timestamptz[], $17::text[], $18::boolean[])
ON CONFLICT (call_sid, script_id) DO NOTHING
RETURNING call_sid, script_id`

// insertRecordsArgs are insertRecords' arrays for recs.
func insertRecordsArgs(recs []consent.Record) []any {
	n := len(recs)
	text := func() []string { return make([]string, n) }
	ids, calls, scripts, versions, languages, shas := text(), text(), text(), text(), text(), text()
	decisions, sources, refs, froms, tos, transcripts, timings := text(), text(), text(), text(), text(), text(), text()
	confidences, bargeIns, heard := make([]*float64, n), make([]bool, n), make([]int64, n)
	decidedAt, mustHear := make([]time.Time, n), make([]bool, n)
	for i, rec := range recs {
		ids[i], calls[i], scripts[i], versions[i], languages[i], shas[i] = rec.ID, rec.CallSID, rec.Script.ID, rec.Script.Version, rec.Script.Language, rec.Script.SHA256
		decisions[i], sources[i], confidences[i], bargeIns[i], heard[i], refs[i] = string(rec.Decision), string(rec.Source), rec.Confidence, rec.BargeIn, rec.DisclosureHeardMS, rec.PatientRef
		froms[i], tos[i], transcripts[i], decidedAt[i], timings[i], mustHear[i] = string(rec.From), string(rec.To), string(rec.Transcript), rec.DecidedAt, string(rec.Timing), rec.MustHearComplete
	}
	return []any{ids, calls, scripts, versions, languages, shas, decisions, sources, confidences, bargeIns, heard, refs,
		froms, tos, transcripts, decidedAt, timings, mustHear}
}

const selectRecord = `SELECT ` + recordColumns + ` FROM consent_records WHERE call_sid = $1 AND script_id = $2`

func insertArgs(rec consent.Record) []any {
	return []any{
		rec.ID, rec.CallSID, rec.Script.ID, rec.Script.Version, rec.Script.Language, rec.Script.SHA256,
		string(rec.Decision), string(rec.Source), rec.Confidence, rec.BargeIn, rec.DisclosureHeardMS, rec.PatientRef,
		string(rec.From), string(rec.To), string(rec.Transcript), rec.DecidedAt, string(rec.Timing), rec.MustHearComplete,
	}
}

func scanRecord(row pgx.Row) (consent.Record, error) {
	var (
		r                        consent.Record
		decision, source, timing string
		from, to, transcript     string
	)
	err := row.Scan(&r.ID, &r.CallSID, &r.Script.ID, &r.Script.Version, &r.Script.Language, &r.Script.SHA256,
		&decision, &source, &r.Confidence, &r.BargeIn, &r.DisclosureHeardMS, &r.PatientRef,
		&from, &to, &transcript, &r.DecidedAt, &timing, &r.MustHearComplete)
	if err != nil {
		return consent.Record{}, err
	}
	r.Decision, r.Source, r.Timing = consent.Decision(decision), consent.Source(source), consent.Timing(timing)
	r.From, r.To, r.Transcript = consent.Sealed(from), consent.Sealed(to), consent.Sealed(transcript)
	// pgx returns timestamptz in the local zone.
	r.DecidedAt = r.DecidedAt.UTC()
	return r, nil
}

// Record implements consent.Store. It validates rec, then queues it for the
// next batch.
func (s *Store) Record(ctx context.Context, rec consent.Record) (consent.Record, bool, error) {
	rec, err := rec.Normalized()
	if err != nil {
		return consent.Record{}, false, fmt.Errorf("pgstore: record: %w", err)
	}
	r, err := s.records.Do(ctx, rec)
	if err != nil {
		return consent.Record{}, false, fmt.Errorf("pgstore: record %s/%s: %w", rec.CallSID, rec.Script.ID, ctxCause(ctx, err))
	}
	return r.rec, r.created, nil
}

type recordKey struct{ callSID, scriptID string }

func keyOf(rec consent.Record) recordKey { return recordKey{rec.CallSID, rec.Script.ID} }

// commit is the group committer's function: it stores a batch of validated
// records in one transaction.
//
// A (call, script) twice in the batch is stored once: the first to arrive
// wins and the others get it back, not created. The rest are inserted in
// (call SID, script id) order. Every instance's batches take the rows' locks
// in that one order (an INSERT that meets another transaction's uncommitted
// row for its key waits for it), so two batches sharing records cannot
// deadlock, and the outbox takes its own locks (the audit chains') only
// after all the inserts.
func (s *Store) commit(ctx context.Context, batch []consent.Record) ([]groupcommit.Result[stored], error) {
	first := make(map[recordKey]int, len(batch))
	var pending []int
	for i, rec := range batch {
		if _, dup := first[keyOf(rec)]; !dup {
			first[keyOf(rec)] = i
			pending = append(pending, i)
		}
	}
	slices.SortFunc(pending, func(a, b int) int { return compareKeys(keyOf(batch[a]), keyOf(batch[b])) })
	out := make([]groupcommit.Result[stored], len(batch))
	// A conflict means the other row is committed (INSERT waits for an
	// in-flight conflicting transaction to end), so reading it back finds it,
	// unless that row was deleted in between; a few tries cover that.
	for try := range 3 {
		recs := make([]consent.Record, len(pending))
		for j, i := range pending {
			recs[j] = batch[i]
		}
		res, err := s.commitOnce(ctx, recs)
		if err != nil {
			if try == 0 {
				return nil, err // nothing written: the committer may retry each alone
			}
			for _, i := range pending {
				out[i].Err = err
			}
			pending = nil
			break
		}
		var vanished []int
		for j, i := range pending {
			if res[j] == nil {
				vanished = append(vanished, i)
				continue
			}
			out[i].Val = *res[j]
		}
		pending = vanished
		if len(pending) == 0 {
			break
		}
	}
	for _, i := range pending {
		out[i].Err = errors.New("conflicting record vanished three times")
	}
	for i, rec := range batch {
		if w := first[keyOf(rec)]; w != i {
			out[i] = groupcommit.Result[stored]{Val: stored{rec: out[w].Val.rec}, Err: out[w].Err}
		}
	}
	return out, nil
}

func compareKeys(a, b recordKey) int {
	return cmp.Or(strings.Compare(a.callSID, b.callSID), strings.Compare(a.scriptID, b.scriptID))
}

// selectRecords reads the records of some keys (given as two parallel
// arrays).
const selectRecords = `SELECT ` + recordColumns + ` FROM consent_records
WHERE (call_sid, script_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`

// commitOnce inserts recs (distinct keys) in one transaction and returns, for
// each, what is stored: the record itself (created) or the earlier one; nil
// when the earlier record could not be read back (deleted meanwhile).
func (s *Store) commitOnce(ctx context.Context, recs []consent.Record) ([]*stored, error) {
	var (
		tx  pgx.Tx
		err error
		q   interface {
			Query(context.Context, string, ...any) (pgx.Rows, error)
		} = s.pool
	)
	if s.outbox != nil {
		if tx, err = s.pool.Begin(ctx); err != nil {
			return nil, err
		}
		defer tx.Rollback(ctx) // no-op after Commit
		q = tx
	}
	// Without an outbox there is no explicit transaction: the one
	// statement is all or nothing on its own.
	rows, err := q.Query(ctx, insertRecords, insertRecordsArgs(recs)...)
	if err != nil {
		return nil, err
	}
	inserted := make(map[recordKey]bool, len(recs))
	var k recordKey
	if _, err := pgx.ForEachRow(rows, []any{&k.callSID, &k.scriptID}, func() error { inserted[k] = true; return nil }); err != nil {
		return nil, err
	}
	out := make([]*stored, len(recs))
	var conflicts []int
	for i := range recs {
		if inserted[keyOf(recs[i])] {
			out[i] = &stored{rec: recs[i], created: true}
		} else {
			conflicts = append(conflicts, i)
		}
	}
	if len(conflicts) > 0 {
		calls, scripts := make([]string, len(conflicts)), make([]string, len(conflicts))
		for j, i := range conflicts {
			calls[j], scripts[j] = recs[i].CallSID, recs[i].Script.ID
		}
		// Planned for its parameters every time (QueryExecModeExec: an
		// unnamed statement), not once per connection: a generic plan
		// made while consent_records held a page or two scans the whole
		// table on every duplicate delivery once it is large
		// (TestConflictLookUpStaysIndexed).
		rows, err := q.Query(ctx, selectRecords, pgx.QueryExecModeExec, calls, scripts)
		if err != nil {
			return nil, fmt.Errorf("read existing: %w", err)
		}
		existing := map[recordKey]consent.Record{}
		for rows.Next() {
			r, err := scanRecord(rows)
			if err != nil {
				rows.Close()
				return nil, fmt.Errorf("read existing: %w", err)
			}
			existing[keyOf(r)] = r
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("read existing: %w", err)
		}
		for _, i := range conflicts {
			if r, ok := existing[keyOf(recs[i])]; ok {
				out[i] = &stored{rec: r}
			}
		}
	}
	if tx == nil {
		return out, nil
	}
	var created []consent.Record
	for _, st := range out {
		if st != nil && st.created {
			created = append(created, st.rec)
		}
	}
	if len(created) > 0 {
		// The transactional outbox: the created records' audit entries and
		// delivery jobs, committed with them below.
		if err := s.outbox.Append(ctx, tx, created); err != nil {
			return nil, fmt.Errorf("outbox: %w", err)
		}
	}
	return out, tx.Commit(ctx)
}

// Get implements consent.Store.
func (s *Store) Get(ctx context.Context, callSID, scriptID string) (consent.Record, error) {
	rec, err := scanRecord(s.pool.QueryRow(ctx, selectRecord, callSID, scriptID))
	if errors.Is(err, pgx.ErrNoRows) {
		return consent.Record{}, consent.ErrNotFound
	}
	if err != nil {
		return consent.Record{}, fmt.Errorf("pgstore: get %s/%s: %w", callSID, scriptID, ctxCause(ctx, err))
	}
	return rec, nil
}

// Secret implements consent.Store.
func (s *Store) Secret(ctx context.Context, name string, generate func() (consent.Sealed, error)) (consent.Sealed, error) {
	v, err := s.secret(ctx, name)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("pgstore: secret %q: %w", name, ctxCause(ctx, err))
	}
	gen, err := generate()
	if err != nil {
		return "", fmt.Errorf("pgstore: secret %q: generate: %w", name, err)
	}
	if err := gen.Check("secret " + name); err != nil {
		return "", fmt.Errorf("pgstore: %w", err)
	}
	// First writer wins: a concurrent caller's value may already be there,
	// and then ours is dropped and theirs returned. The read is a new
	// statement, so it sees the winner's committed row.
	if _, err := s.pool.Exec(ctx, `INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`,
		name, string(gen)); err != nil {
		return "", fmt.Errorf("pgstore: secret %q: %w", name, ctxCause(ctx, err))
	}
	v, err = s.secret(ctx, name)
	if err != nil {
		return "", fmt.Errorf("pgstore: secret %q: %w", name, ctxCause(ctx, err))
	}
	return v, nil
}

func (s *Store) secret(ctx context.Context, name string) (consent.Sealed, error) {
	var v string
	err := s.pool.QueryRow(ctx, `SELECT value FROM secrets WHERE name = $1`, name).Scan(&v)
	return consent.Sealed(v), err
}

// CallStarted implements consent.Store.
func (s *Store) CallStarted(ctx context.Context, c consent.StartedCall) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO started_calls
    (call_sid, script_id, script_version, script_language, script_sha256, from_sealed, to_sealed, started_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (call_sid) DO UPDATE SET script_id = excluded.script_id, script_version = excluded.script_version,
    script_language = excluded.script_language, script_sha256 = excluded.script_sha256`,
		c.CallSID, c.Script.ID, c.Script.Version, c.Script.Language, c.Script.SHA256, string(c.From), string(c.To), c.StartedAt)
	if err != nil {
		return fmt.Errorf("pgstore: call started %s: %w", c.CallSID, ctxCause(ctx, err))
	}
	return nil
}

// StartedCall implements consent.Store.
func (s *Store) StartedCall(ctx context.Context, callSID string) (consent.StartedCall, error) {
	c := consent.StartedCall{CallSID: callSID}
	var from, to string
	err := s.pool.QueryRow(ctx, `SELECT script_id, script_version, script_language, script_sha256, from_sealed, to_sealed, started_at
FROM started_calls WHERE call_sid = $1`, callSID).Scan(&c.Script.ID, &c.Script.Version, &c.Script.Language, &c.Script.SHA256, &from, &to, &c.StartedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return consent.StartedCall{}, consent.ErrNotFound
	}
	if err != nil {
		return consent.StartedCall{}, fmt.Errorf("pgstore: started call %s: %w", callSID, ctxCause(ctx, err))
	}
	c.From, c.To, c.StartedAt = consent.Sealed(from), consent.Sealed(to), c.StartedAt.UTC()
	return c, nil
}

// Unsettled implements consent.Store.
func (s *Store) Unsettled(ctx context.Context, startedBefore time.Time, limit int) ([]consent.StartedCall, error) {
	rows, err := s.pool.Query(ctx, `SELECT c.call_sid, c.script_id, c.script_version, c.script_language, c.script_sha256,
    c.from_sealed, c.to_sealed, c.started_at
FROM started_calls c
WHERE c.started_at < $1 AND NOT EXISTS (SELECT 1 FROM consent_records r WHERE r.call_sid = c.call_sid)
ORDER BY c.started_at LIMIT $2`, pgx.QueryExecModeExec, startedBefore, limit) // planned per run, as selectRecords
	if err != nil {
		return nil, fmt.Errorf("pgstore: unsettled calls: %w", ctxCause(ctx, err))
	}
	calls, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (consent.StartedCall, error) {
		var c consent.StartedCall
		var from, to string
		err := row.Scan(&c.CallSID, &c.Script.ID, &c.Script.Version, &c.Script.Language, &c.Script.SHA256, &from, &to, &c.StartedAt)
		c.From, c.To, c.StartedAt = consent.Sealed(from), consent.Sealed(to), c.StartedAt.UTC()
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: unsettled calls: %w", ctxCause(ctx, err))
	}
	return calls, nil
}

// Ping reports whether the server answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("pgstore: ping: %w", ctxCause(ctx, err))
	}
	return nil
}

// Close lets the queued records commit, then closes the pool, waiting for
// connections in use to be returned. Record after Close fails. It is safe to
// call more than once.
func (s *Store) Close() error {
	s.records.Close()
	s.pool.Close()
	return nil
}
