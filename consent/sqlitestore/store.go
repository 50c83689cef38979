// Package sqlitestore is the embedded consent.Store: one SQLite file in the
// data directory, through the pure-Go driver modernc.org/sqlite, so a single
// instance needs no database server.
//
// # Concurrency
//
// SQLite allows one writer at a time; a second connection that tries to write
// gets SQLITE_BUSY, and a transaction that starts reading and then upgrades
// to writing can get it even with a busy timeout. The store therefore keeps
// two handles on the file:
//
//   - the writer: one connection (SetMaxOpenConns(1)) whose transactions all
//     begin IMMEDIATE (_txlock=immediate). Concurrent writers in this process
//     queue in database/sql for that connection, honouring their contexts
//     while they wait, instead of spinning in SQLite's busy handler. IMMEDIATE
//     takes the write lock at BEGIN, so a transaction never has to upgrade a
//     read lock; busy_timeout covers the remaining case of another process
//     (or a second Store) writing the same file.
//   - the readers: a small pool of query_only connections. In WAL mode readers
//     and the writer do not block each other, so Get never waits behind a
//     Record.
//
// # Group commit and durability
//
// Record calls arriving together share one transaction (internal/groupcommit):
// one committer takes every Record waiting, up to MaxBatch, and inserts them,
// with the relay events of those created (Options.Outbox), in one IMMEDIATE transaction on the
// writer. The commit is durable (synchronous=FULL: the WAL is fsynced before
// COMMIT returns), and a batch pays for one fsync however many decisions it
// holds. The insert and look-up statements are prepared once on the writer's
// connection. A caller that gives up while still queued is never written; see
// groupcommit for the rest of the context rules.
package sqlitestore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/internal/groupcommit"
	"github.com/consentline/consentline/internal/telemetry"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// FileName is the database file Open creates in its directory.
const FileName = "consentline.db"

// Options configure Open.
type Options struct {
	// Migrate applies pending migrations before Open returns. Without it the
	// caller runs Migrate (e.g. from a separate "migrate" command).
	Migrate bool

	// Outbox, when set, writes the relay events of the records a batch
	// created (serve gives it the relay's writer, relay.NewOutbox over
	// relaysqlite: audit entries and River delivery jobs), inside the
	// batch's transaction, right after the inserts, with the records ordered by call SID and script id. An
	// error from it rolls the whole transaction back, so the records and
	// their events are stored together or not at all; the batch's records
	// are then committed again one at a time, so a record the outbox cannot
	// handle fails alone. Nil: records only (the store's own tests).
	//
	// The outbox must use tx, not DB(): the writer has one connection and tx
	// is holding it, so a statement on DB() would wait until ctx ends.
	Outbox consent.Outbox[*sql.Tx]

	// MaxBatch is the most records one transaction takes (default
	// groupcommit.DefaultMaxBatch).
	MaxBatch int

	// Metrics, when set, records each record transaction's duration and
	// batch size (nil: none).
	Metrics *telemetry.Metrics
}

// Store is the SQLite consent.Store. Its methods are safe for concurrent use.
type Store struct {
	write   *sql.DB
	read    *sql.DB
	path    string
	outbox  consent.Outbox[*sql.Tx]
	records *groupcommit.Committer[consent.Record, stored]

	// The hot statements, prepared on the writer's connection at the first
	// batch (the tables may not exist before Migrate). Only the committer's
	// one loop goroutine uses them, and Close closes them after it stopped.
	insertStmt, selectStmt *sql.Stmt

	closeOnce sync.Once
	closeErr  error
}

var _ consent.Store = (*Store)(nil)

const (
	// busy_timeout only matters when another process or Store writes the same
	// file; within one Store writers queue for the single connection.
	//
	// synchronous=FULL: in WAL mode every COMMIT fsyncs the WAL before it
	// returns. A decision is read back to the caller ("you agreed") once
	// Record returns, so it must survive a power cut from then on;
	// synchronous=NORMAL survives a process crash but may lose the last
	// commits when the machine loses power. Group commit shares each fsync
	// among the batch, which is what makes FULL affordable.
	//
	// foreign_keys is per connection and off by default in SQLite.
	writeParams = "_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)&_txlock=immediate"
	// query_only makes a stray write on a reader fail loudly instead of
	// becoming a second writer.
	readParams = "_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=query_only(1)"
)

// Open opens (creating when needed) dir/consentline.db. The directory and the
// file are made private to the user: the records are sealed, but call SIDs and
// decisions are not.
func Open(ctx context.Context, dir string, opts Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("sqlitestore: no data directory given")
	}
	if strings.ContainsAny(dir, "?#") {
		// The driver reads everything after '?' as connection parameters.
		return nil, fmt.Errorf("sqlitestore: data directory %q must not contain '?' or '#'", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("sqlitestore: create data directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	// SQLite would create the file 0644; create it first so it is 0600. The
	// -wal and -shm files SQLite makes take the database file's mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: %w", err)
	}
	f.Close()

	s := &Store{path: path, outbox: opts.Outbox}
	s.records = groupcommit.New(s.commit, groupcommit.Options{MaxBatch: opts.MaxBatch, Grace: commitGrace,
		Observe: func(items int, took time.Duration, err error) {
			opts.Metrics.StoreCommit(telemetry.CommitRecords, items, took, err)
		}})
	s.write, err = sql.Open("sqlite", path+"?"+writeParams)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: %w", err)
	}
	s.write.SetMaxOpenConns(1)
	s.write.SetMaxIdleConns(1)
	s.write.SetConnMaxLifetime(0)
	s.write.SetConnMaxIdleTime(0)

	// Connect the writer before any reader: it switches the file to WAL, and a
	// bad path or a file that is not a database fails here, not on the first
	// call.
	var mode string
	if err := s.write.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		s.write.Close()
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, ctxCause(ctx, err))
	}
	if !strings.EqualFold(mode, "wal") {
		// Without WAL readers block the writer and the design above fails;
		// some network file systems cannot do WAL.
		s.write.Close()
		return nil, fmt.Errorf("sqlitestore: %s is in journal mode %q, not WAL (is %s on a network file system?)", path, mode, dir)
	}

	s.read, err = sql.Open("sqlite", path+"?"+readParams)
	if err != nil {
		s.write.Close()
		return nil, fmt.Errorf("sqlitestore: %w", err)
	}
	readers := max(4, runtime.GOMAXPROCS(0))
	s.read.SetMaxOpenConns(readers)
	s.read.SetMaxIdleConns(readers)
	if err := s.read.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("sqlitestore: open %s for reading: %w", path, ctxCause(ctx, err))
	}

	if opts.Migrate {
		if err := s.Migrate(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// DB returns the writer handle (one connection, IMMEDIATE transactions), for
// code that must write the same file, such as River's riversqlite driver.
// Everything written through it queues with the store's own writes.
func (s *Store) DB() *sql.DB { return s.write }

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// timeLayout is fixed-width RFC 3339 in UTC with microseconds: it parses back
// with time.RFC3339Nano and sorts as text in time order.
const timeLayout = "2006-01-02T15:04:05.000000Z"

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	return t.UTC(), err
}

// ctxCause makes a context's end visible to errors.Is when the driver reports
// only its consequence (SQLite says "interrupted").
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

// The conflict target names only (call_sid, script_id): a clash on the id
// primary key is a real error (two records given one id), not a duplicate.
const insertRecord = `INSERT INTO consent_records (` + recordColumns + `, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (call_sid, script_id) DO NOTHING`

const selectRecord = `SELECT ` + recordColumns + ` FROM consent_records WHERE call_sid = ? AND script_id = ?`

func scanRecord(row *sql.Row) (consent.Record, error) {
	var (
		r         consent.Record
		conf      sql.NullFloat64
		decidedAt string
	)
	err := row.Scan(&r.ID, &r.CallSID, &r.Script.ID, &r.Script.Version, &r.Script.Language, &r.Script.SHA256,
		&r.Decision, &r.Source, &conf, &r.BargeIn, &r.DisclosureHeardMS, &r.PatientRef,
		&r.From, &r.To, &r.Transcript, &decidedAt, &r.Timing, &r.MustHearComplete)
	if err != nil {
		return consent.Record{}, err
	}
	if conf.Valid {
		r.Confidence = &conf.Float64
	}
	if r.DecidedAt, err = parseTime(decidedAt); err != nil {
		return consent.Record{}, fmt.Errorf("record %s: decided_at: %w", r.ID, err)
	}
	return r, nil
}

// commitGrace is how long a caller whose context ended while its batch was
// committing still waits for the outcome.
const commitGrace = 500 * time.Millisecond

// stored is one Record's outcome.
type stored struct {
	rec     consent.Record
	created bool
}

// Record implements consent.Store. It validates rec, then queues it for the
// next batch.
func (s *Store) Record(ctx context.Context, rec consent.Record) (consent.Record, bool, error) {
	rec, err := rec.Normalized()
	if err != nil {
		return consent.Record{}, false, fmt.Errorf("sqlitestore: record: %w", err)
	}
	r, err := s.records.Do(ctx, rec)
	if err != nil {
		return consent.Record{}, false, fmt.Errorf("sqlitestore: record %s/%s: %w", rec.CallSID, rec.Script.ID, ctxCause(ctx, err))
	}
	return r.rec, r.created, nil
}

type recordKey struct{ callSID, scriptID string }

func keyOf(rec consent.Record) recordKey { return recordKey{rec.CallSID, rec.Script.ID} }

// commit is the group committer's function: it stores a batch of validated
// records in one transaction. A (call, script) twice in the batch is stored
// once: the first to arrive wins and the others get it back, not created.
// The rest are inserted in (call SID, script id) order, as on PostgreSQL.
func (s *Store) commit(ctx context.Context, batch []consent.Record) ([]groupcommit.Result[stored], error) {
	first := make(map[recordKey]int, len(batch))
	var uniq []int
	for i, rec := range batch {
		if _, dup := first[keyOf(rec)]; !dup {
			first[keyOf(rec)] = i
			uniq = append(uniq, i)
		}
	}
	slices.SortFunc(uniq, func(a, b int) int {
		ka, kb := keyOf(batch[a]), keyOf(batch[b])
		return cmp.Or(strings.Compare(ka.callSID, kb.callSID), strings.Compare(ka.scriptID, kb.scriptID))
	})
	recs := make([]consent.Record, len(uniq))
	for j, i := range uniq {
		recs[j] = batch[i]
	}
	res, err := s.commitTx(ctx, recs)
	if err != nil {
		return nil, err
	}
	out := make([]groupcommit.Result[stored], len(batch))
	for j, i := range uniq {
		out[i].Val = res[j]
	}
	for i, rec := range batch {
		if w := first[keyOf(rec)]; w != i {
			out[i].Val = stored{rec: out[w].Val.rec}
		}
	}
	return out, nil
}

// prepare prepares the hot statements on the writer, once.
func (s *Store) prepare(ctx context.Context) error {
	if s.insertStmt != nil {
		return nil
	}
	ins, err := s.write.PrepareContext(ctx, insertRecord)
	if err != nil {
		return err
	}
	sel, err := s.write.PrepareContext(ctx, selectRecord)
	if err != nil {
		ins.Close()
		return err
	}
	s.insertStmt, s.selectStmt = ins, sel
	return nil
}

// commitTx inserts recs (distinct keys) in one transaction and returns what
// is stored for each: the record itself (created) or the earlier one.
func (s *Store) commitTx(ctx context.Context, recs []consent.Record) ([]stored, error) {
	if err := s.prepare(ctx); err != nil {
		return nil, err
	}
	tx, err := s.write.BeginTx(ctx, nil) // IMMEDIATE: holds the write lock from here
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	// Bound to tx's connection, which is the one they were prepared on: no
	// new prepare.
	ins, sel := tx.StmtContext(ctx, s.insertStmt), tx.StmtContext(ctx, s.selectStmt)
	out := make([]stored, len(recs))
	var created []consent.Record
	now := formatTime(time.Now())
	for i, rec := range recs {
		var conf sql.NullFloat64
		if rec.Confidence != nil {
			conf = sql.NullFloat64{Float64: *rec.Confidence, Valid: true}
		}
		res, err := ins.ExecContext(ctx,
			rec.ID, rec.CallSID, rec.Script.ID, rec.Script.Version, rec.Script.Language, rec.Script.SHA256,
			string(rec.Decision), string(rec.Source), conf, rec.BargeIn, rec.DisclosureHeardMS, rec.PatientRef,
			string(rec.From), string(rec.To), string(rec.Transcript), formatTime(rec.DecidedAt), string(rec.Timing), rec.MustHearComplete, now)
		if err != nil {
			return nil, err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return nil, err
		}
		if n == 1 {
			out[i] = stored{rec: rec, created: true}
			created = append(created, rec)
			continue
		}
		// The write lock we hold means the conflicting row is committed and
		// visible to this transaction.
		existing, err := scanRecord(sel.QueryRowContext(ctx, rec.CallSID, rec.Script.ID))
		if err != nil {
			return nil, fmt.Errorf("read existing %s/%s: %w", rec.CallSID, rec.Script.ID, err)
		}
		out[i] = stored{rec: existing}
	}
	if s.outbox != nil && len(created) > 0 {
		// The transactional outbox: the created records' audit entries and
		// delivery jobs, committed with them below.
		if err := s.outbox.Append(ctx, tx, created); err != nil {
			return nil, fmt.Errorf("outbox: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return out, nil
}

// Get implements consent.Store.
func (s *Store) Get(ctx context.Context, callSID, scriptID string) (consent.Record, error) {
	rec, err := scanRecord(s.read.QueryRowContext(ctx, selectRecord, callSID, scriptID))
	if errors.Is(err, sql.ErrNoRows) {
		return consent.Record{}, consent.ErrNotFound
	}
	if err != nil {
		return consent.Record{}, fmt.Errorf("sqlitestore: get %s/%s: %w", callSID, scriptID, ctxCause(ctx, err))
	}
	return rec, nil
}

// Secret implements consent.Store.
func (s *Store) Secret(ctx context.Context, name string, generate func() (consent.Sealed, error)) (consent.Sealed, error) {
	v, err := s.secret(ctx, name)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("sqlitestore: secret %q: %w", name, ctxCause(ctx, err))
	}
	// generate runs outside any transaction: it may be slow (key
	// generation, sealing) and must not hold the write lock.
	gen, err := generate()
	if err != nil {
		return "", fmt.Errorf("sqlitestore: secret %q: generate: %w", name, err)
	}
	if err := gen.Check("secret " + name); err != nil {
		return "", fmt.Errorf("sqlitestore: %w", err)
	}
	// First writer wins: a concurrent caller's value may already be there,
	// and then ours is dropped and theirs returned.
	if _, err := s.write.ExecContext(ctx,
		`INSERT INTO secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING`,
		name, string(gen), formatTime(time.Now())); err != nil {
		return "", fmt.Errorf("sqlitestore: secret %q: %w", name, ctxCause(ctx, err))
	}
	v, err = s.secret(ctx, name)
	if err != nil {
		return "", fmt.Errorf("sqlitestore: secret %q: %w", name, ctxCause(ctx, err))
	}
	return v, nil
}

func (s *Store) secret(ctx context.Context, name string) (consent.Sealed, error) {
	var v string
	err := s.read.QueryRowContext(ctx, `SELECT value FROM secrets WHERE name = ?`, name).Scan(&v)
	return consent.Sealed(v), err
}

// CallStarted implements consent.Store.
func (s *Store) CallStarted(ctx context.Context, c consent.StartedCall) error {
	_, err := s.write.ExecContext(ctx, `INSERT INTO started_calls
    (call_sid, script_id, script_version, script_language, script_sha256, from_sealed, to_sealed, started_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (call_sid) DO UPDATE SET script_id = excluded.script_id, script_version = excluded.script_version,
    script_language = excluded.script_language, script_sha256 = excluded.script_sha256`,
		c.CallSID, c.Script.ID, c.Script.Version, c.Script.Language, c.Script.SHA256, string(c.From), string(c.To), formatTime(c.StartedAt))
	if err != nil {
		return fmt.Errorf("sqlitestore: call started %s: %w", c.CallSID, ctxCause(ctx, err))
	}
	return nil
}

// StartedCall implements consent.Store.
func (s *Store) StartedCall(ctx context.Context, callSID string) (consent.StartedCall, error) {
	c := consent.StartedCall{CallSID: callSID}
	var from, to, started string
	err := s.read.QueryRowContext(ctx, `SELECT script_id, script_version, script_language, script_sha256, from_sealed, to_sealed, started_at
FROM started_calls WHERE call_sid = ?`, callSID).Scan(&c.Script.ID, &c.Script.Version, &c.Script.Language, &c.Script.SHA256, &from, &to, &started)
	if errors.Is(err, sql.ErrNoRows) {
		return consent.StartedCall{}, consent.ErrNotFound
	}
	if err != nil {
		return consent.StartedCall{}, fmt.Errorf("sqlitestore: started call %s: %w", callSID, ctxCause(ctx, err))
	}
	c.From, c.To = consent.Sealed(from), consent.Sealed(to)
	if c.StartedAt, err = parseTime(started); err != nil {
		return consent.StartedCall{}, fmt.Errorf("sqlitestore: started call %s: %w", callSID, err)
	}
	return c, nil
}

// Unsettled implements consent.Store.
func (s *Store) Unsettled(ctx context.Context, startedBefore time.Time, limit int) ([]consent.StartedCall, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT c.call_sid, c.script_id, c.script_version, c.script_language, c.script_sha256,
    c.from_sealed, c.to_sealed, c.started_at
FROM started_calls c
WHERE c.started_at < ? AND NOT EXISTS (SELECT 1 FROM consent_records r WHERE r.call_sid = c.call_sid)
ORDER BY c.started_at LIMIT ?`, formatTime(startedBefore), limit)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: unsettled calls: %w", ctxCause(ctx, err))
	}
	defer rows.Close()
	var calls []consent.StartedCall
	for rows.Next() {
		var c consent.StartedCall
		var from, to, started string
		if err := rows.Scan(&c.CallSID, &c.Script.ID, &c.Script.Version, &c.Script.Language, &c.Script.SHA256, &from, &to, &started); err != nil {
			return nil, fmt.Errorf("sqlitestore: unsettled calls: %w", err)
		}
		c.From, c.To = consent.Sealed(from), consent.Sealed(to)
		if c.StartedAt, err = parseTime(started); err != nil {
			return nil, fmt.Errorf("sqlitestore: unsettled calls: %w", err)
		}
		calls = append(calls, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitestore: unsettled calls: %w", ctxCause(ctx, err))
	}
	return calls, nil
}

// Ping reports whether the database file can be read. It uses a reader, so a
// long write does not make the instance look unready.
func (s *Store) Ping(ctx context.Context) error {
	var v int64
	// schema_version reads the file's header page, so this touches the disk
	// (unlike a bare SELECT 1).
	if err := s.read.QueryRowContext(ctx, "PRAGMA schema_version").Scan(&v); err != nil {
		return fmt.Errorf("sqlitestore: ping: %w", ctxCause(ctx, err))
	}
	return nil
}

// Close closes both handles; the writer last, so its connection, the last
// one on the file, checkpoints the WAL into the database file. Close is safe
// to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		// Queued records commit first; after this no batch runs, so the
		// statements are free to close.
		s.records.Close()
		var errs []error
		for _, st := range []*sql.Stmt{s.insertStmt, s.selectStmt} {
			if st != nil {
				errs = append(errs, st.Close())
			}
		}
		if s.read != nil {
			errs = append(errs, s.read.Close())
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		// Recommended by SQLite before closing a long-lived connection; it
		// only analyzes tables whose statistics are stale. Best effort.
		_, _ = s.write.ExecContext(ctx, "PRAGMA optimize")
		cancel()
		errs = append(errs, s.write.Close())
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}
