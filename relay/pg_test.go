package relay

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/consentline/consentline/consent/pgstore"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/testdb"
	"github.com/consentline/consentline/relay/relaydriver"
	"github.com/consentline/consentline/relay/relaypg"
)

func newPGEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	ctx := context.Background()
	k := keyring(t, hexA, "")
	outbox, err := NewOutbox(relaypg.New(nil), k, true)
	if err != nil {
		t.Fatal(err)
	}
	store, err := pgstore.Open(ctx, testdb.Postgres(t), pgstore.Options{Migrate: true, Outbox: outbox})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	pool := store.Pool()
	if err := relaypg.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Now().UTC()}
	if o.respond == nil {
		o.respond = func(int, http.ResponseWriter, *http.Request, []byte) {}
	}
	hook := newCatchHook(t, o.respond)
	cfg, logs := testConfig(t, k, clock, hook, o)
	r, err := New(relaypg.New(pool), cfg)
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
	// A call's consent and call.completed events: seq 1 and 2 of its chain.
	if _, _, err := e.store.Record(ctx, record(t, e.keyring, "a1", "CAa1")); err != nil {
		t.Fatal(err)
	}
	cc, _, err := e.relay.RecordCallCompleted(ctx, CallCompleted{CallSID: "CAa1", From: "+14158675309", At: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	chain := ChainOf("CAa1")
	for _, q := range []string{
		fmt.Sprintf(`UPDATE relay_audit SET type = 'consent.declined' WHERE chain = %d AND seq = 2`, chain),
		fmt.Sprintf(`DELETE FROM relay_audit WHERE chain = %d AND seq = 2`, chain),
		`TRUNCATE relay_audit`,
	} {
		if err := e.exec(ctx, q); err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := e.exec(ctx, `ALTER TABLE relay_audit DISABLE TRIGGER relay_audit_no_update_delete`); err != nil {
		t.Fatal(err)
	}
	if err := e.exec(ctx, fmt.Sprintf(`DELETE FROM relay_audit WHERE chain = %d AND seq = 1`, chain)); err != nil {
		t.Fatal(err)
	}
	_, err = e.relay.VerifyAudit(ctx)
	var ce *ChainError
	if !errors.As(err, &ce) || ce.Chain != chain || ce.Seq != 2 || ce.EventID != cc.ID {
		t.Fatalf("deleted first entry: %v", err)
	}
}

// Concurrent appends from many transactions (as several instances would
// make) must leave every chain unbroken: the per-chain advisory lock
// serializes appends to one chain while other chains go ahead. Each call's
// status callback also arrives twice at once, as Twilio may re-send it: the
// lock, taken before the "already in the log" lookup, lets exactly one of
// them append.
func TestPostgresConcurrentAppendsChain(t *testing.T) {
	e := newPGEnv(t, envOpts{})
	ctx := context.Background()
	const calls = 48 // consent + call.completed twice: 144 appends at once
	var wg sync.WaitGroup
	errs := make(chan error, 3*calls)
	var mu sync.Mutex
	created := map[string]int{}
	for i := range calls {
		sid := fmt.Sprintf("CAc%d", i)
		wg.Add(3)
		go func() {
			defer wg.Done()
			_, _, err := e.store.Record(ctx, record(t, e.keyring, fmt.Sprintf("c%d", i), sid))
			errs <- err
		}()
		for range 2 {
			go func() {
				defer wg.Done()
				ev, ok, err := e.relay.RecordCallCompleted(ctx, CallCompleted{CallSID: sid, From: "+14158675309", At: time.Now()})
				if ok {
					mu.Lock()
					created[ev.ID]++
					mu.Unlock()
				}
				errs <- err
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(created) != calls {
		t.Fatalf("%d call.completed events created for %d calls", len(created), calls)
	}
	for id, n := range created {
		if n != 1 {
			t.Fatalf("%s created %d times", id, n)
		}
	}
	res, err := e.relay.VerifyAudit(ctx)
	if err != nil || res.Entries != 2*calls {
		t.Fatalf("verify: %+v %v", res, err)
	}
	want := map[int]int64{}
	for i := range calls {
		sid := fmt.Sprintf("CAc%d", i)
		want[ChainOf(sid)] += 2
		c, _ := e.relay.Event(ctx, fmt.Sprintf("c%d", i))
		cc, _ := e.relay.Event(ctx, CallCompletedEventID(sid))
		if c.Chain != ChainOf(sid) || cc.Chain != c.Chain {
			t.Errorf("call %s: events in chains %d and %d, want %d", sid, c.Chain, cc.Chain, ChainOf(sid))
		}
	}
	if len(res.Chains) != len(want) || len(want) < AuditChains/2 {
		t.Fatalf("appends spread over %d chains, want %d (and at least %d)", len(res.Chains), len(want), AuditChains/2)
	}
	for _, h := range res.Chains {
		if h.Seq != want[h.Chain] {
			t.Errorf("chain %d: %d entries, want %d", h.Chain, h.Seq, want[h.Chain])
		}
	}
}

// An append waits only for transactions appending to its own chain.
func TestPostgresChainLocksIndependent(t *testing.T) {
	e := newPGEnv(t, envOpts{})
	ctx := context.Background()
	pool := e.store.(*pgstore.Store).Pool()
	held, other := "CAheld", ""
	for i := 0; other == ""; i++ {
		if sid := fmt.Sprintf("CAother%d", i); ChainOf(sid) != ChainOf(held) {
			other = sid
		}
	}
	// Another instance's transaction sits inside an append to held's chain.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // released at the end either way
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, relaydriver.AuditLockKey+int64(ChainOf(held))); err != nil {
		t.Fatal(err)
	}
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, _, err := e.relay.RecordCallCompleted(octx, CallCompleted{CallSID: other, At: time.Now()}); err != nil {
		t.Fatalf("append to another chain waited: %v", err)
	}
	hctx, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	if _, _, err := e.relay.RecordCallCompleted(hctx, CallCompleted{CallSID: held, At: time.Now()}); err == nil {
		t.Fatal("append to a locked chain went ahead")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, created, err := e.relay.RecordCallCompleted(ctx, CallCompleted{CallSID: held, At: time.Now()}); err != nil || !created {
		t.Fatalf("append once the lock is free: %v %v", created, err)
	}
	if res, err := e.relay.VerifyAudit(ctx); err != nil || res.Entries != 2 || len(res.Chains) != 2 {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

// BenchmarkPostgresRecordWithOutbox: consent insert, audit append (under its
// chain's advisory lock) and River job insert in one transaction, one after
// another: the latency of one decision's transaction, which parallel chains
// do not change.
func BenchmarkPostgresRecordWithOutbox(b *testing.B) {
	ctx := context.Background()
	store, k := benchPGStore(b, "")
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

// benchPGStore opens a migrated store with the outbox hook on a fresh
// database; urlParams (e.g. "pool_max_conns=32") are added to its URL.
func benchPGStore(b *testing.B, urlParams string) (*pgstore.Store, *pii.Keyring) {
	b.Helper()
	ctx := context.Background()
	k := keyring(b, hexA, "")
	outbox, _ := NewOutbox(relaypg.New(nil), k, true)
	url := testdb.Postgres(b)
	if urlParams != "" {
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		url += sep + urlParams
	}
	store, err := pgstore.Open(ctx, url, pgstore.Options{Migrate: true, Outbox: outbox})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	if err := relaypg.Migrate(ctx, store.Pool()); err != nil {
		b.Fatal(err)
	}
	return store, k
}

var benchCall atomic.Int64 // call SIDs distinct across b.N rounds

// BenchmarkPostgresRecordWithOutboxParallel: the same transaction from many
// callers at once, which is what the audit log's one lock used to
// serialize (each commit's WAL flush waited for the previous one's) and
// parallel chains let overlap.
//
//   - callers=16: 16 goroutines, each recording one decision after another
//     (closed loop): the most decisions/s the store sustains.
//   - rate=1500: decisions arriving at 1,500/s whatever the latency (open
//     loop, latency counted from each one's due time): the target load.
//
// conns=default is pgxpool's default pool (max(4, NumCPU) connections),
// which is what serve gets unless DATABASE_URL sets pool_max_conns;
// conns=32 shows what the database itself takes.
//
//	go test -run '^$' -bench RecordWithOutboxParallel ./relay
func BenchmarkPostgresRecordWithOutboxParallel(b *testing.B) {
	for _, conns := range []string{"default", "32"} {
		params := ""
		if conns != "default" {
			params = "pool_max_conns=" + conns
		}
		for _, load := range []string{"callers=16", "rate=1500"} {
			b.Run("conns="+conns+"/"+load, func(b *testing.B) {
				store, k := benchPGStore(b, params)
				if load == "rate=1500" {
					benchRecordsAtRate(b, store, k, 1500)
				} else {
					benchRecordsClosed(b, store, k, 16)
				}
			})
		}
	}
}

func benchRecordsClosed(b *testing.B, store *pgstore.Store, k *pii.Keyring, callers int) {
	ctx := context.Background()
	run := benchCall.Add(1)
	proto := record(b, k, "", "")
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		lat  = make([]time.Duration, b.N)
	)
	b.ResetTimer()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := proto
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				rec.ID, rec.CallSID = "", fmt.Sprintf("CA%d_%d", run, i)
				start := time.Now()
				if _, _, err := store.Record(ctx, rec); err != nil {
					b.Error(err)
					return
				}
				lat[i] = time.Since(start)
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	reportRecords(b, lat, b.Elapsed())
}

func benchRecordsAtRate(b *testing.B, store *pgstore.Store, k *pii.Keyring, perSecond int) {
	ctx := context.Background()
	run := benchCall.Add(1)
	rec := record(b, k, "", "")
	interval := time.Second / time.Duration(perSecond)
	lat := make([]time.Duration, b.N)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		due := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(due))
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rec
			r.CallSID = fmt.Sprintf("CA%d_%d", run, i)
			if _, _, err := store.Record(ctx, r); err != nil {
				b.Error(err)
				return
			}
			lat[i] = time.Since(due) // includes any wait behind a late start
		}()
	}
	wg.Wait()
	b.StopTimer()
	reportRecords(b, lat, time.Since(start))
}

func reportRecords(b *testing.B, lat []time.Duration, elapsed time.Duration) {
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "decisions/s")
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
}

// Several instances (each its own pool, store and group committer) get the
// same decisions at once, as Twilio's retries and partial results spread
// over replicas would send them, together with each call's status callback
// twice. Their batches overlap in records and in chains; inserting in one
// key order and locking chains in increasing order means none deadlocks
// (PostgreSQL would abort one with "deadlock detected"), each decision is
// created once, and every chain verifies.
func TestPostgresOverlappingBatchesFromInstances(t *testing.T) {
	ctx := context.Background()
	k := keyring(t, hexA, "")
	url := testdb.Postgres(t)
	const instances, calls = 3, 120
	stores := make([]*pgstore.Store, instances)
	for i := range stores {
		outbox, err := NewOutbox(relaypg.New(nil), k, true)
		if err != nil {
			t.Fatal(err)
		}
		st, err := pgstore.Open(ctx, url, pgstore.Options{Migrate: true, Outbox: outbox})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		stores[i] = st
	}
	if err := relaypg.Migrate(ctx, stores[0].Pool()); err != nil {
		t.Fatal(err)
	}
	cfg, _ := testConfig(t, k, newClock(), newCatchHook(t, func(int, http.ResponseWriter, *http.Request, []byte) {}), envOpts{})
	rel, err := New(relaypg.New(stores[1].Pool()), cfg)
	if err != nil {
		t.Fatal(err)
	}

	var (
		wg       sync.WaitGroup
		created  atomic.Int64
		ccCreate atomic.Int64
		errs     = make(chan error, calls*(instances+2))
		start    = make(chan struct{})
	)
	for c := range calls {
		sid := fmt.Sprintf("CAover%03d", c)
		for i, st := range stores {
			// Each instance decided on its own (a different id), in a
			// different order per instance.
			rec := record(t, k, fmt.Sprintf("rec-%d-%d", c, i), sid)
			wg.Go(func() {
				<-start
				_, ok, err := st.Record(ctx, rec)
				if ok {
					created.Add(1)
				}
				errs <- err
			})
		}
		for range 2 {
			wg.Go(func() {
				<-start
				_, ok, err := rel.RecordCallCompleted(ctx, CallCompleted{CallSID: sid, From: "+14158675309", At: time.Now()})
				if ok {
					ccCreate.Add(1)
				}
				errs <- err
			})
		}
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if created.Load() != calls || ccCreate.Load() != calls {
		t.Fatalf("%d decisions and %d call.completed created for %d calls", created.Load(), ccCreate.Load(), calls)
	}
	res, err := rel.VerifyAudit(ctx)
	if err != nil || res.Entries != 2*calls {
		t.Fatalf("verify: %+v %v", res, err)
	}
	var jobs int
	if err := stores[0].Pool().QueryRow(ctx, `SELECT count(*) FROM river_job`).Scan(&jobs); err != nil || jobs != 2*calls {
		t.Fatalf("%d delivery jobs (err %v), want %d", jobs, err, 2*calls)
	}
}

func TestPostgresUndecidedCallCarriesCallCompleted(t *testing.T) {
	runUndecidedCallCarriesCallCompleted(t, newPGEnv(t, envOpts{}))
}

// The audit append's look-ups stay index look-ups as the log grows. pgx
// prepares each statement once per connection and PostgreSQL settles on a
// generic plan after five executions; one chosen while relay_audit was
// empty scanned the whole log on every later append (seen: 1.6 billion rows
// read on a 280,000-entry log). The test makes that happen on one
// connection (look-ups on a log of a page or two, then a large log) and counts the
// rows PostgreSQL read by scanning relay_audit whole: without the fix,
// 200,000 for four look-ups.
func TestPostgresAuditLookupsStayIndexed(t *testing.T) {
	ctx := context.Background()
	dsn := testdb.Postgres(t)
	store, err := pgstore.Open(ctx, dsn, pgstore.Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := relaypg.Migrate(ctx, store.Pool()); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	d := relaypg.New(nil)
	lookUp := func() {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := d.Audit(tx).Existing(ctx, []string{"ev-0"}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := d.Audit(tx).Begin(ctx, []int{0, 3, 7}, []string{"ev-1", "ev-2"}); err != nil {
			t.Fatal(err)
		}
	}
	fill := func(from, to int) {
		if _, err := conn.Exec(ctx, `INSERT INTO relay_audit (chain, seq, event_id, type, occurred_at, event, prev_hash, hash)
SELECT i % 16, i, 'bulk-' || i, 'consent.granted', '2026-01-01T00:00:00Z', '{}', '', '' FROM generate_series($1::int, $2::int) AS i`, from, to); err != nil {
			t.Fatal(err)
		}
	}
	fill(1, 100)  // a new deployment's first minutes: a page or two
	for range 8 { // past the five custom plans
		lookUp()
	}
	const entries = 50_000
	fill(101, entries)
	before := testdb.SeqRowsRead(t, conn, "relay_audit")
	for range 4 {
		lookUp()
	}
	if read := testdb.SeqRowsRead(t, conn, "relay_audit") - before; read >= entries {
		t.Fatalf("4 audit look-ups read %d rows by scanning a %d-entry log: a plan made for the empty log is still in use", read, entries)
	}
}
