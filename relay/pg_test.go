package relay

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consentline/consentline/consent/pgstore"
	"github.com/consentline/consentline/internal/testdb"
)

func newPGEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	ctx := context.Background()
	k := keyring(t, hexA, "")
	outbox, err := NewOutbox(k, true)
	if err != nil {
		t.Fatal(err)
	}
	store, err := pgstore.Open(ctx, testdb.Postgres(t), pgstore.Options{Migrate: true, AfterInsert: outbox.PostgresAfterInsert})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	pool := store.Pool()
	if err := MigratePostgres(ctx, pool); err != nil {
		t.Fatal(err)
	}
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

// BenchmarkPostgresRecordWithOutbox: consent insert, audit append (under the
// advisory lock) and River job insert in one transaction.
func BenchmarkPostgresRecordWithOutbox(b *testing.B) {
	ctx := context.Background()
	k := keyring(b, hexA, "")
	outbox, _ := NewOutbox(k, true)
	store, err := pgstore.Open(ctx, testdb.Postgres(b), pgstore.Options{Migrate: true, AfterInsert: outbox.PostgresAfterInsert})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	if err := MigratePostgres(ctx, store.Pool()); err != nil {
		b.Fatal(err)
	}
	rec := record(b, k, "", "")
	i := 0
	for b.Loop() {
		i++
		rec.ID, rec.CallSID = "", fmt.Sprintf("CA%d", i)
		if _, _, err := store.Record(ctx, rec); err != nil {
			b.Fatal(err)
		}
	}
}
