package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/storetest"
	"github.com/consentline/consentline/internal/sqlmigrate"
	"github.com/consentline/consentline/internal/testdb"
)

func open(t testing.TB, url string, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), url, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// advisoryLocks counts advisory locks held or awaited in the current
// database (pg_locks spans the cluster, where other tests run in parallel).
const advisoryLocks = `SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`

func TestStore(t *testing.T) {
	t.Parallel()
	fresh := func(t *testing.T) consent.Store {
		return open(t, testdb.Postgres(t), Options{Migrate: true})
	}
	storetest.Run(t, fresh)
	t.Run("Resealer", func(t *testing.T) { storetest.RunResealer(t, fresh) })
}

func count(t *testing.T, s *Store, query string, args ...any) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func TestOpenDoesNotMigrateUnlessAsked(t *testing.T) {
	t.Parallel()
	s := open(t, testdb.Postgres(t), Options{})
	ctx := context.Background()
	if _, err := s.Get(ctx, "CA1", "s"); err == nil || errors.Is(err, consent.ErrNotFound) {
		t.Fatalf("Get on an unmigrated database: err = %v, want a missing-table error", err)
	}
	for range 2 { // idempotent
		if err := s.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	files, _ := sqlmigrate.Load(embeddedMigrations())
	if n := count(t, s, `SELECT count(*) FROM schema_migrations`); n != len(files) || n == 0 {
		t.Fatalf("schema_migrations has %d rows, want %d", n, len(files))
	}
	if _, err := s.Get(ctx, "CA1", "s"); !errors.Is(err, consent.ErrNotFound) {
		t.Fatalf("after Migrate: %v", err)
	}
}

// TestConcurrentMigrate: instances starting together on a fresh database
// (each its own pool, as separate processes would be) all succeed, and each
// migration runs once. Without the advisory lock, concurrent CREATE TABLE
// statements fail on PostgreSQL's catalog unique indexes.
func TestConcurrentMigrate(t *testing.T) {
	t.Parallel()
	url := testdb.Postgres(t)
	const n = 4
	stores := make([]*Store, n)
	for i := range stores {
		stores[i] = open(t, url, Options{})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i, s := range stores {
		wg.Go(func() {
			<-start
			errs[i] = s.Migrate(ctx)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Migrate %d: %v", i, err)
		}
	}
	files, _ := sqlmigrate.Load(embeddedMigrations())
	if got := count(t, stores[0], `SELECT count(*) FROM schema_migrations`); got != len(files) {
		t.Fatalf("schema_migrations has %d rows, want %d", got, len(files))
	}
	// No connection went back to a pool still holding the lock.
	if got := count(t, stores[0], advisoryLocks); got != 0 {
		t.Fatalf("%d advisory locks still held after Migrate", got)
	}
}

// TestMigrateWaitsForLockWithinContext: while another session holds the
// migration lock, Migrate waits, gives up when its context ends, and leaves
// no lock behind; once the lock is free it runs.
func TestMigrateWaitsForLockWithinContext(t *testing.T) {
	t.Parallel()
	url := testdb.Postgres(t)
	ctx := context.Background()
	holder, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrationLockKey); err != nil {
		t.Fatal(err)
	}
	s := open(t, url, Options{})
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	if err := s.Migrate(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Migrate while locked: err = %v, want DeadlineExceeded", err)
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("Migrate took %v to give up", took)
	}
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock($1)`, migrationLockKey); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate after the lock was freed: %v", err)
	}
	if got := count(t, s, advisoryLocks); got != 0 {
		t.Fatalf("%d advisory locks held after Migrate", got)
	}
}

// TestMigrationRunner drives the runner with files a later issue might add:
// pending ones apply in order, a failing one leaves nothing behind, and a
// renamed one is refused.
func TestMigrationRunner(t *testing.T) {
	t.Parallel()
	s := open(t, testdb.Postgres(t), Options{})
	ctx := context.Background()
	base := fstest.MapFS{}
	ms, err := sqlmigrate.Load(embeddedMigrations())
	if err != nil || len(ms) == 0 {
		t.Fatalf("embedded migrations: %d, %v", len(ms), err)
	}
	for _, m := range ms {
		base[fmt.Sprintf("%04d_%s.sql", m.Version, m.Name)] = &fstest.MapFile{Data: []byte(m.SQL)}
	}
	// Numbered after the embedded ones, wherever those have got to.
	last := ms[len(ms)-1].Version
	name := func(offset int64, label string) string { return fmt.Sprintf("%04d_%s.sql", last+offset, label) }
	with := func(m fstest.MapFS, add map[string]string) fstest.MapFS {
		out := fstest.MapFS{}
		for k, v := range m {
			out[k] = v
		}
		for k, v := range add {
			out[k] = &fstest.MapFile{Data: []byte(v)}
		}
		return out
	}

	next := with(base, map[string]string{
		name(2, "later"): `ALTER TABLE extra ADD COLUMN b text;`,
		name(1, "extra"): `CREATE TABLE extra (a text); INSERT INTO extra (a) VALUES ('x');`,
	})
	for range 2 {
		if err := s.migrate(ctx, next); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, s, `SELECT count(*) FROM extra WHERE b IS NULL`); n != 1 {
		t.Fatalf("extra has %d rows: the first new migration ran more or less than once", n)
	}

	failing := with(next, map[string]string{name(3, "broken"): `CREATE TABLE broken (a text); INSERT INTO nowhere VALUES (1);`})
	if err := s.migrate(ctx, failing); err == nil || !strings.Contains(err.Error(), strings.TrimSuffix(name(3, "broken"), ".sql")) {
		t.Fatalf("failing migration: err = %v", err)
	}
	if n := count(t, s, `SELECT count(*) FROM pg_tables WHERE tablename = 'broken'`); n != 0 {
		t.Fatal("failed migration left its table behind")
	}
	if n := count(t, s, `SELECT count(*) FROM schema_migrations WHERE version = $1`, last+3); n != 0 {
		t.Fatal("failed migration recorded as applied")
	}
	if n := count(t, s, advisoryLocks); n != 0 {
		t.Fatalf("%d advisory locks held after a failed migration", n)
	}

	renamed := with(next, map[string]string{name(1, "other"): `SELECT 1;`})
	delete(renamed, name(1, "extra"))
	if err := s.migrate(ctx, renamed); err == nil {
		t.Fatal("a different migration under an applied version was accepted")
	}
}

func TestOutbox(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testdb.Postgres(t)
	if err := open(t, url, Options{}).Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	var fail atomic.Bool
	boom := errors.New("outbox full")
	s := open(t, url, Options{Outbox: storetest.OutboxFunc[pgx.Tx](func(ctx context.Context, tx pgx.Tx, recs []consent.Record) error {
		calls.Add(int32(len(recs)))
		for _, rec := range recs {
			// The hook runs in the inserting transaction: it sees the rows.
			var n int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM consent_records WHERE id = $1`, rec.ID).Scan(&n); err != nil {
				return err
			}
			if n != 1 {
				return fmt.Errorf("hook sees %d rows for %s", n, rec.ID)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO secrets (name, value) VALUES ($1, '')`, "outbox-"+rec.ID); err != nil {
				return err
			}
		}
		if fail.Load() {
			return boom
		}
		return nil
	})})

	fail.Store(true)
	rec := storetest.NewRecord(storetest.CallSID(), "hipaa-consent")
	if _, _, err := s.Record(ctx, rec); !errors.Is(err, boom) {
		t.Fatalf("Record with a failing hook: err = %v, want it wrapped", err)
	}
	if _, err := s.Get(ctx, rec.CallSID, rec.Script.ID); !errors.Is(err, consent.ErrNotFound) {
		t.Fatalf("a failing hook left the record: %v", err)
	}
	if n := count(t, s, `SELECT count(*) FROM secrets WHERE name = $1`, "outbox-"+rec.ID); n != 0 {
		t.Fatal("a failing hook left its own write")
	}

	fail.Store(false)
	calls.Store(0)
	if _, created, err := s.Record(ctx, rec); err != nil || !created {
		t.Fatalf("Record after the hook recovered: created=%v err=%v", created, err)
	}
	if _, created, err := s.Record(ctx, rec); err != nil || created {
		t.Fatalf("duplicate: created=%v err=%v", created, err)
	}
	if c := calls.Load(); c != 1 {
		t.Fatalf("hook given %d records for one created record and one duplicate, want 1", c)
	}

	// The concurrent exactly-once guarantee holds on the transactional path
	// too.
	storetest.Run(t, func(t *testing.T) consent.Store { return s })
}

// TestBlockedRecordHonoursDeadline: a Record whose INSERT waits on another
// session's uncommitted row for the same call and script gives up at its
// deadline, and once that session rolls back, it records.
func TestBlockedRecordHonoursDeadline(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testdb.Postgres(t)
	s := open(t, url, Options{Migrate: true})
	rec := storetest.NewRecord(storetest.CallSID(), "hipaa-consent")

	other, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	blocker := storetest.NewRecord(rec.CallSID, rec.Script.ID)
	blocker, _ = blocker.Normalized()
	if _, err := tx.Exec(ctx, insertRecords, insertRecordsArgs([]consent.Record{blocker})...); err != nil {
		t.Fatal(err)
	}

	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	if _, _, err := s.Record(short, rec); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("blocked Record: err = %v, want DeadlineExceeded", err)
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("blocked Record took %v to give up", took)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	stored, created, err := s.Record(ctx, rec)
	if err != nil || !created || stored.ID != rec.ID {
		t.Fatalf("Record after the blocker rolled back: created=%v id=%s err=%v", created, stored.ID, err)
	}
}

func TestOpenBadURL(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Open(ctx, "postgres://postgres:s3cret@127.0.0.1:1/x?sslmode=disable&connect_timeout=2", Options{}); err == nil {
		t.Fatal("Open succeeded against a closed port")
	} else if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error shows the password: %v", err)
	}
	if _, err := Open(ctx, "postgres://postgres:s3cret@127.0.0.1:5432/x?sslmode=bogus", Options{}); err == nil {
		t.Fatal("Open accepted a malformed URL")
	} else if strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error shows the password: %v", err)
	}
}

func BenchmarkRecord(b *testing.B) {
	s := open(b, testdb.Postgres(b), Options{Migrate: true})
	ctx := context.Background()
	// Only the keys change per iteration, so the allocations reported are
	// the store's, not the test record's.
	template := storetest.NewRecord(storetest.CallSID(), "hipaa-consent")
	var seq atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rec := template
			n := strconv.FormatUint(seq.Add(1), 10)
			rec.CallSID = template.CallSID + n
			rec.ID = template.ID + n
			if _, created, err := s.Record(ctx, rec); err != nil || !created {
				b.Errorf("Record: created=%v err=%v", created, err)
				return
			}
		}
	})
}

// TestGroupCommit runs storetest.GroupCommit on PostgreSQL.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	var s *Store
	storetest.GroupCommit(t, func(t *testing.T, hook func([]consent.Record) error) consent.Store {
		// One batch at a time, so that holding the first one queues the rest.
		s = open(t, testdb.Postgres(t), Options{Migrate: true, ConcurrentBatches: 1,
			Outbox: storetest.OutboxFunc[pgx.Tx](func(_ context.Context, _ pgx.Tx, recs []consent.Record) error { return hook(recs) })})
		return s
	}, func() int { return count(t, s, `SELECT count(*) FROM consent_records`) })
}

// TestStatementsPreparedOnce: pgx's default exec mode caches prepared
// statements per connection, and nothing in Record defeats it (a statement
// text built per call would): after many Records on a one-connection pool,
// the insert is one server-side prepared statement, not one per call.
func TestStatementsPreparedOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testdb.Postgres(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	s := open(t, url+sep+"pool_max_conns=1", Options{Migrate: true, Outbox: storetest.OutboxFunc[pgx.Tx](func(context.Context, pgx.Tx, []consent.Record) error { return nil })})
	for range 20 {
		if _, _, err := s.Record(ctx, storetest.NewRecord(storetest.CallSID(), "hipaa-consent")); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, s, `SELECT count(*) FROM pg_prepared_statements WHERE statement = $1`, insertRecords); n != 1 {
		t.Fatalf("insert prepared %d times on the connection, want once", n)
	}
}

// A duplicate delivery reads the stored record back by its key, not by
// scanning consent_records, however the connection's plans were made: here
// on a table of a page or two, before it grew to 50,000 records.
func TestConflictLookUpStaysIndexed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := open(t, testdb.Postgres(t)+"&pool_max_conns=1", Options{Migrate: true}) // one connection: one plan cache
	dup := func() {
		rec := storetest.NewRecord(storetest.CallSID(), "hipaa-consent")
		if _, created, err := s.Record(ctx, rec); err != nil || !created {
			t.Fatalf("Record: %v %v", created, err)
		}
		again := storetest.NewRecord(rec.CallSID, rec.Script.ID)
		if _, created, err := s.Record(ctx, again); err != nil || created {
			t.Fatalf("duplicate Record: created %v, %v", created, err)
		}
	}
	for range 8 { // past the five custom plans
		dup()
	}
	const records = 50_000
	if _, err := s.pool.Exec(ctx, `INSERT INTO consent_records (id, call_sid, script_id, script_version, script_language, script_sha256,
    decision, source, barge_in, disclosure_heard_ms, patient_ref, decided_at)
SELECT 'bulk-' || i, 'CAbulk' || i, 'hipaa-consent', 'v1', 'en-US', '', 'granted', 'dtmf', false, 0, '', now()
FROM generate_series(1, $1::int) AS i`, records); err != nil {
		t.Fatal(err)
	}
	before := testdb.SeqRowsRead(t, s.pool, "consent_records")
	for range 4 {
		dup()
	}
	if read := testdb.SeqRowsRead(t, s.pool, "consent_records") - before; read >= records {
		t.Fatalf("4 duplicate deliveries read %d rows by scanning %d records", read, records)
	}
}
