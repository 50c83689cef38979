package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/storetest"
	"github.com/consentline/consentline/internal/sqlmigrate"
)

func open(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	opts.Migrate = true
	s, err := Open(context.Background(), dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestStore(t *testing.T) {
	fresh := func(t *testing.T) consent.Store { return open(t, t.TempDir(), Options{}) }
	storetest.Run(t, fresh)
	t.Run("Resealer", func(t *testing.T) { storetest.RunResealer(t, fresh) })
}

func TestReopenKeepsRecords(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "data") // Open creates it
	ctx := context.Background()
	s, err := Open(ctx, dir, Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	a := storetest.NewRecord(storetest.CallSID(), "hipaa-consent")
	b := storetest.NewRecord(storetest.CallSID(), "hipaa-consent")
	b.Confidence = nil
	for _, rec := range []consent.Record{a, b} {
		if _, _, err := s.Record(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	secret, err := s.Secret(ctx, "k", func() (consent.Sealed, error) { return storetest.Sealed("k"), nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	st, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("database file mode %v, want 0600", st.Mode().Perm())
	}

	s2 := open(t, dir, Options{})
	for _, rec := range []consent.Record{a, b} {
		got, err := s2.Get(ctx, rec.CallSID, rec.Script.ID)
		if err != nil {
			t.Fatalf("after reopen: %v", err)
		}
		storetest.AssertSameRecord(t, got, rec)
		if _, created, err := s2.Record(ctx, rec); err != nil || created {
			t.Fatalf("after reopen, Record again: created=%v err=%v", created, err)
		}
	}
	if v, err := s2.Secret(ctx, "k", func() (consent.Sealed, error) { return storetest.Sealed("new"), nil }); err != nil || v != secret {
		t.Fatalf("after reopen, Secret = %q, %v; want %q", v, err, secret)
	}
}

func TestPragmas(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	ctx := context.Background()
	for _, c := range []struct {
		db     *sql.DB
		pragma string
		want   string
	}{
		{s.write, "journal_mode", "wal"},
		{s.write, "synchronous", "2"}, // FULL: a commit is on disk when Record returns
		{s.write, "foreign_keys", "1"},
		{s.write, "busy_timeout", "10000"},
		{s.write, "query_only", "0"},
		{s.read, "journal_mode", "wal"},
		{s.read, "foreign_keys", "1"},
		{s.read, "busy_timeout", "10000"},
		{s.read, "query_only", "1"},
	} {
		var got string
		if err := c.db.QueryRowContext(ctx, "PRAGMA "+c.pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("PRAGMA %s = %s, want %s", c.pragma, got, c.want)
		}
	}
	if s.DB() != s.write || s.DB().Stats().MaxOpenConnections != 1 {
		t.Errorf("DB() must be the single-connection writer")
	}
	// A write through a reader fails instead of contending for the lock.
	if _, err := s.read.ExecContext(ctx, `DELETE FROM secrets`); err == nil {
		t.Error("reader accepted a write")
	}
}

func TestOpenDoesNotMigrateUnlessAsked(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Get(ctx, "CA1", "s"); err == nil || errors.Is(err, consent.ErrNotFound) {
		t.Fatalf("Get on an unmigrated store: err = %v, want a missing-table error", err)
	}
	for range 2 { // idempotent
		if err := s.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	files, _ := sqlmigrate.Load(embeddedMigrations())
	var n int
	if err := s.read.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != len(files) || n == 0 {
		t.Fatalf("schema_migrations has %d rows, want %d", n, len(files))
	}
	if _, err := s.Get(ctx, "CA1", "s"); !errors.Is(err, consent.ErrNotFound) {
		t.Fatalf("after Migrate: %v", err)
	}
}

// TestMigrationRunner drives the runner with files a later issue might add:
// pending ones apply in order, a failing one leaves nothing behind, and a
// renamed one is refused.
func TestMigrationRunner(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	ctx := context.Background()
	base, last := embeddedMap(t)
	// Numbered after the embedded ones, wherever those have got to.
	name := func(offset int64, label string) string { return fmt.Sprintf("%04d_%s.sql", last+offset, label) }

	withNext := clone(base)
	withNext[name(2, "later")] = &fstest.MapFile{Data: []byte(`ALTER TABLE extra ADD COLUMN b TEXT;`)}
	withNext[name(1, "extra")] = &fstest.MapFile{Data: []byte(`CREATE TABLE extra (a TEXT); INSERT INTO extra (a) VALUES ('x');`)}
	if err := s.migrate(ctx, withNext); err != nil {
		t.Fatal(err)
	}
	if err := s.migrate(ctx, withNext); err != nil {
		t.Fatalf("second run: %v", err)
	}
	var n int
	if err := s.read.QueryRowContext(ctx, `SELECT count(*) FROM extra WHERE b IS NULL`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("extra rows %d, err %v: the first new migration ran more or less than once", n, err)
	}

	failing := clone(withNext)
	failing[name(3, "broken")] = &fstest.MapFile{Data: []byte(`CREATE TABLE broken (a TEXT); INSERT INTO nowhere VALUES (1);`)}
	if err := s.migrate(ctx, failing); err == nil || !strings.Contains(err.Error(), strings.TrimSuffix(name(3, "broken"), ".sql")) {
		t.Fatalf("failing migration: err = %v", err)
	}
	if err := s.read.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE name = 'broken'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("failed migration left its table behind (%d, %v)", n, err)
	}
	if err := s.read.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = ?`, last+3).Scan(&n); err != nil || n != 0 {
		t.Fatalf("failed migration recorded as applied (%d, %v)", n, err)
	}

	renamed := clone(withNext)
	delete(renamed, name(1, "extra"))
	renamed[name(1, "other")] = &fstest.MapFile{Data: []byte(`SELECT 1;`)}
	if err := s.migrate(ctx, renamed); err == nil {
		t.Fatal("a different migration under an applied version was accepted")
	}

}

// embeddedMap copies the embedded migrations into a MapFS tests can extend,
// and returns the highest version among them.
func embeddedMap(t *testing.T) (fstest.MapFS, int64) {
	t.Helper()
	ms, err := sqlmigrate.Load(embeddedMigrations())
	if err != nil || len(ms) == 0 {
		t.Fatalf("embedded migrations: %d, %v", len(ms), err)
	}
	out := fstest.MapFS{}
	for _, m := range ms {
		out[fmt.Sprintf("%04d_%s.sql", m.Version, m.Name)] = &fstest.MapFile{Data: []byte(m.SQL)}
	}
	return out, ms[len(ms)-1].Version
}

func clone(m fstest.MapFS) fstest.MapFS {
	out := fstest.MapFS{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

func TestOutbox(t *testing.T) {
	ctx := context.Background()
	var calls atomic.Int32
	boom := errors.New("outbox full")
	var fail atomic.Bool
	s := open(t, t.TempDir(), Options{Outbox: storetest.OutboxFunc[*sql.Tx](func(ctx context.Context, tx *sql.Tx, recs []consent.Record) error {
		calls.Add(int32(len(recs)))
		for _, rec := range recs {
			// The hook runs in the inserting transaction: it sees the rows.
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM consent_records WHERE id = ?`, rec.ID).Scan(&n); err != nil {
				return err
			}
			if n != 1 {
				return fmt.Errorf("hook sees %d rows for %s", n, rec.ID)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO secrets (name, value, created_at) VALUES (?, '', '')`, "outbox-"+rec.ID); err != nil {
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
	var n int
	if err := s.read.QueryRowContext(ctx, `SELECT count(*) FROM secrets WHERE name = ?`, "outbox-"+rec.ID).Scan(&n); err != nil || n != 0 {
		t.Fatalf("a failing hook left its own write (%d, %v)", n, err)
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
}

// TestWaitingWriterHonoursContext: a Record queued behind a slow transaction
// gives up when its context ends instead of waiting for the writer.
func TestWaitingWriterHonoursContext(t *testing.T) {
	ctx := context.Background()
	holding := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	s := open(t, t.TempDir(), Options{Outbox: storetest.OutboxFunc[*sql.Tx](func(ctx context.Context, tx *sql.Tx, recs []consent.Record) error {
		once.Do(func() { close(holding); <-release })
		return nil
	})})
	first := storetest.NewRecord(storetest.CallSID(), "hipaa-consent")
	done := make(chan error, 1)
	go func() { _, _, err := s.Record(ctx, first); done <- err }()
	<-holding

	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, _, err := s.Record(short, storetest.NewRecord(storetest.CallSID(), "hipaa-consent"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("queued Record: err = %v, want DeadlineExceeded", err)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("queued Record took %v to give up", took)
	}
	// Readers are not blocked by the held write transaction.
	if _, err := s.Get(short, "CAnone", "s"); err != nil && !errors.Is(err, consent.ErrNotFound) && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get during a write: %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentWritersNoBusy: many goroutines writing distinct records while
// others read, through one Store and through a second Store on the same file
// (as a second process would), never see SQLITE_BUSY.
func TestConcurrentWritersNoBusy(t *testing.T) {
	dir := t.TempDir()
	stores := []*Store{open(t, dir, Options{}), open(t, dir, Options{})}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const writers, each = 64, 3
	var wg sync.WaitGroup
	errs := make(chan error, writers*each*2)
	start := make(chan struct{})
	for w := range writers {
		s := stores[w%2]
		wg.Go(func() {
			<-start
			for range each {
				rec := storetest.NewRecord(storetest.CallSID(), "hipaa-consent")
				if _, _, err := s.Record(ctx, rec); err != nil {
					errs <- err
					continue
				}
				if _, err := s.Get(ctx, rec.CallSID, rec.Script.ID); err != nil {
					errs <- err
				}
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var n int
	if err := stores[0].read.QueryRowContext(ctx, `SELECT count(*) FROM consent_records`).Scan(&n); err != nil || n != writers*each {
		t.Fatalf("%d records stored (err %v), want %d", n, err, writers*each)
	}
}

// TestConcurrentMigrate: processes starting together on a fresh file (here
// separate Stores, each with its own writer connection) all migrate without
// SQLITE_BUSY. Each migration transaction reads schema_migrations before
// writing; begun DEFERRED, two of them would both hold read locks and one
// would fail its upgrade to a write at once, busy_timeout or not.
func TestConcurrentMigrate(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	const n = 4
	stores := make([]*Store, n)
	for i := range stores {
		s, err := Open(ctx, dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		stores[i] = s
	}
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
	var got int
	if err := stores[0].read.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&got); err != nil || got != len(files) {
		t.Fatalf("schema_migrations has %d rows (err %v), want %d", got, err, len(files))
	}
}

func TestOpenRejectsBadDir(t *testing.T) {
	if _, err := Open(context.Background(), "", Options{}); err == nil {
		t.Error("empty dir accepted")
	}
	if _, err := Open(context.Background(), filepath.Join(t.TempDir(), "a?b"), Options{}); err == nil {
		t.Error("dir with '?' accepted")
	}
	notDB := t.TempDir()
	if err := os.WriteFile(filepath.Join(notDB, FileName), []byte("this is not a database file, it is just some text that is long enough"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), notDB, Options{}); err == nil {
		t.Error("a file that is not a database was opened")
	}
}

var benchCall atomic.Uint64

func BenchmarkRecord(b *testing.B) {
	s := open(b, b.TempDir(), Options{})
	ctx := context.Background()
	// Only the keys change per iteration, so the allocations reported are
	// the store's, not the test record's.
	template := storetest.NewRecord(storetest.CallSID(), "hipaa-consent")
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rec := template
			n := strconv.FormatUint(benchCall.Add(1), 10)
			rec.CallSID = template.CallSID + n
			rec.ID = template.ID + n
			if _, created, err := s.Record(ctx, rec); err != nil || !created {
				b.Errorf("Record: created=%v err=%v", created, err)
				return
			}
		}
	})
}

// TestGroupCommit runs storetest.GroupCommit on the embedded database.
func TestGroupCommit(t *testing.T) {
	var s *Store
	storetest.GroupCommit(t, func(t *testing.T, hook func([]consent.Record) error) consent.Store {
		s = open(t, t.TempDir(), Options{
			Outbox: storetest.OutboxFunc[*sql.Tx](func(_ context.Context, _ *sql.Tx, recs []consent.Record) error { return hook(recs) })})
		return s
	}, func() int {
		var n int
		if err := s.read.QueryRowContext(context.Background(), `SELECT count(*) FROM consent_records`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	})
}
