package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/consentline/consentline/consent"
)

// pgDatabase creates a fresh database on the local PostgreSQL (or
// TEST_DATABASE_URL) and drops it after the test. Unreachable: skipped, but
// a failure under CI, where skipping would hide the whole PostgreSQL path.
func pgDatabase(t *testing.T) string {
	t.Helper()
	admin := os.Getenv("TEST_DATABASE_URL")
	if admin == "" {
		admin = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL unreachable: %v", err)
		}
		t.Skipf("PostgreSQL unreachable (%v); set TEST_DATABASE_URL to run", err)
	}
	defer conn.Close(ctx)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := fmt.Sprintf("ct_relay_%d_%s", time.Now().Unix(), hex.EncodeToString(b))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), admin)
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			c.Close(context.Background())
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatal("TEST_DATABASE_URL is not a URL")
	}
	u.Path = "/" + name
	return u.String()
}

// pgRecords stands in for pgstore until it lands: a unique insert and the
// AfterInsert hook in the same transaction, which is all the outbox needs.
type pgRecords struct {
	pool        *pgxpool.Pool
	afterInsert func(context.Context, pgx.Tx, consent.Record) error
}

func (s *pgRecords) Record(ctx context.Context, rec consent.Record) (consent.Record, bool, error) {
	created := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO consent_records (id, call_sid, script_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
			rec.ID, rec.CallSID, rec.Script.ID)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		created = true
		return s.afterInsert(ctx, tx, rec)
	})
	return rec, created, err
}

func (s *pgRecords) Get(ctx context.Context, callSID, scriptID string) (consent.Record, error) {
	var id string
	err := s.pool.QueryRow(ctx, `SELECT id FROM consent_records WHERE call_sid = $1 AND script_id = $2`, callSID, scriptID).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return consent.Record{}, consent.ErrNotFound
	}
	return consent.Record{ID: id}, err
}

func (s *pgRecords) Secret(context.Context, string, func() (consent.Sealed, error)) (consent.Sealed, error) {
	return "", errors.New("not implemented")
}
func (s *pgRecords) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }
func (s *pgRecords) Close() error                   { return nil }

func newPGEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	ctx := context.Background()
	url := pgDatabase(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	schema, err := os.ReadFile("migrations/postgres/0002_relay_audit.sql")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE consent_records (id text PRIMARY KEY, call_sid text NOT NULL, script_id text NOT NULL, UNIQUE (call_sid, script_id))`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, string(schema)); err != nil {
		t.Fatal(err)
	}
	if err := MigratePostgres(ctx, pool); err != nil {
		t.Fatal(err)
	}
	k := keyring(t, hexA, "")
	clock := &fakeClock{t: time.Now().UTC()}
	if o.respond == nil {
		o.respond = func(int, http.ResponseWriter, *http.Request, []byte) {}
	}
	hook := newCatchHook(t, o.respond)
	cfg, logs := testConfig(t, k, clock, hook, o)
	r, err := NewPostgres(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	store := &pgRecords{pool: pool, afterInsert: r.Outbox().PostgresAfterInsert}
	return &env{store: store, relay: r, keyring: k, clock: clock, hook: hook, signer: cfg.Signer, logs: logs,
		exec: func(ctx context.Context, q string) error { _, err := pool.Exec(ctx, q); return err }}
}

func TestPostgresOutboxDeliversSignedAuditedEvent(t *testing.T) {
	runDeliversSignedAuditedEvent(t, newPGEnv(t, envOpts{}))
}

func TestPostgresRetryDeadLetterReplay(t *testing.T) {
	runRetryDeadLetterReplay(t, newPGEnv(t, envOpts{}))
}

func TestPostgresAuditAppendOnly(t *testing.T) {
	e := newPGEnv(t, envOpts{})
	ctx := context.Background()
	for _, id := range []string{"a1", "a2"} {
		if _, _, err := e.store.Record(ctx, record(t, e.keyring, id, "CA"+id)); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{
		`UPDATE relay_audit SET type = 'consent.declined' WHERE seq = 2`,
		`DELETE FROM relay_audit WHERE seq = 2`,
		`TRUNCATE relay_audit`,
	} {
		if err := e.exec(ctx, q); err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := e.exec(ctx, `ALTER TABLE relay_audit DISABLE TRIGGER relay_audit_no_update_delete`); err != nil {
		t.Fatal(err)
	}
	if err := e.exec(ctx, `DELETE FROM relay_audit WHERE seq = 1`); err != nil {
		t.Fatal(err)
	}
	_, err := e.relay.VerifyAudit(ctx)
	var ce *ChainError
	if !errors.As(err, &ce) || ce.Seq != 2 || ce.EventID != "a2" {
		t.Fatalf("deleted first entry: %v", err)
	}
}

// Concurrent appends from many transactions (as several instances would
// make) must still form one unbroken chain: the advisory lock serializes
// them.
func TestPostgresConcurrentAppendsChain(t *testing.T) {
	e := newPGEnv(t, envOpts{})
	ctx := context.Background()
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if i%2 == 0 {
				_, _, err = e.store.Record(ctx, record(t, e.keyring, fmt.Sprintf("c%d", i), fmt.Sprintf("CAc%d", i)))
			} else {
				_, _, err = e.relay.RecordCallCompleted(ctx, CallCompleted{CallSID: fmt.Sprintf("CAc%d", i), From: "+14158675309", At: time.Now()})
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	res, err := e.relay.VerifyAudit(ctx)
	if err != nil || res.Entries != n {
		t.Fatalf("verify: %+v %v", res, err)
	}
}
