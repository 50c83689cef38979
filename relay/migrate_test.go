package relay

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/pgstore"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/sqlmigrate"
	"github.com/consentline/consentline/internal/testdb"
	"github.com/consentline/consentline/relay/relaydriver"
	"github.com/consentline/consentline/relay/relaypg"
	"github.com/consentline/consentline/relay/relaysqlite"
)

// The relay's first two migrations are the SQL the consent stores shipped
// as their 0002 and 0004 (testdata/legacy holds those files as they
// shipped), under a header saying so: adopting an old database's tables as
// these versions is only sound if they are the same.
func TestMigrationsAreTheStoresShippedOnes(t *testing.T) {
	for dialect, files := range map[string]fs.FS{"postgres": relaypg.Migrations(), "sqlite": relaysqlite.Migrations()} {
		ms, err := sqlmigrate.Load(files)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range relaydriver.Adoptable {
			i := slices.IndexFunc(ms, func(m sqlmigrate.Migration) bool { return m.Version == a.Version })
			if i < 0 || ms[i].Name != a.Name {
				t.Fatalf("%s: adoptable version %d %q is not a migration file", dialect, a.Version, a.Name)
			}
			legacy, err := os.ReadFile(fmt.Sprintf("testdata/legacy/%s/%04d_%s.sql", dialect, a.StoreVersion, a.StoreName))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(ms[i].SQL, string(legacy)) {
				t.Errorf("%s: %s is not the store's shipped %04d_%s.sql", dialect, ms[i].File(), a.StoreVersion, a.StoreName)
			}
			if !strings.Contains(ms[i].SQL, "CREATE TABLE "+a.Table+" (") {
				t.Errorf("%s: %s does not create %s", dialect, ms[i].File(), a.Table)
			}
		}
	}
}

// legacyStoreMigrations are the consent store's migrations as the binary
// before the relay owned its schema had them: today's files, with 0002 and
// 0004 as they shipped (creating the relay's tables).
func legacyStoreMigrations(t *testing.T, store, dialect string) []sqlmigrate.Migration {
	t.Helper()
	fsys := fstest.MapFS{}
	for _, dir := range []string{"../consent/" + store + "/migrations", "testdata/legacy/" + dialect} {
		files, err := fs.Glob(os.DirFS(dir), "*.sql")
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			b, err := os.ReadFile(dir + "/" + f)
			if err != nil {
				t.Fatal(err)
			}
			fsys[f] = &fstest.MapFile{Data: b} // the legacy files replace the empty ones
		}
	}
	ms, err := sqlmigrate.Load(fsys)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 6 || !strings.Contains(ms[1].SQL, "CREATE TABLE relay_audit (") {
		t.Fatalf("legacy layout: %d migrations, 0002 = %.60q", len(ms), ms[1].SQL)
	}
	return ms
}

// upgradeDB is one database under test: its store, and how to read it.
type upgradeDB struct {
	store   consent.Store
	newRel  func(Config) (*Relay, error)
	migrate func(ctx context.Context) error // the new binary's: the store's, then the relay's
	query   func(ctx context.Context, q string) ([][2]string, error)
	exec    func(ctx context.Context, q string) error
}

// TestUpgradeFromStoreOwnedSchema: a database migrated and written by the
// binary whose consent store created relay_audit and its checkpoints
// (schema_migrations 0002, 0004) is migrated by this one: the relay adopts
// its tables instead of creating them again, nothing is lost, the signed
// chain still verifies, and appending goes on from the old heads.
func TestUpgradeFromStoreOwnedSchema(t *testing.T) {
	for name, open := range map[string]func(t *testing.T, ob consentOutbox) upgradeDB{
		"sqlite":   openLegacySQLite,
		"postgres": openLegacyPostgres,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			k := keyring(t, hexA, "")
			ob := newConsentOutbox(t, name, k)
			db := open(t, ob)
			key, _ := pii.NewPseudonymKey()
			clock := newClock()
			cfg := Config{Keyring: k, Pseudonymizer: pii.NewPseudonymizer(key), Now: clock.Now}
			rel, err := db.newRel(cfg)
			if err != nil {
				t.Fatal(err)
			}
			fill := func(prefix string, n int) {
				for i := range n {
					sid := fmt.Sprintf("CA%s%d", prefix, i)
					if _, created, err := db.store.Record(ctx, record(t, k, "rec_"+sid, sid)); err != nil || !created {
						t.Fatalf("record %s: created=%v err=%v", sid, created, err)
					}
					if _, _, err := rel.RecordCallCompleted(ctx, CallCompleted{CallSID: sid, From: "+14158675309", At: clock.Now()}); err != nil {
						t.Fatal(err)
					}
				}
			}
			signer := testSigner(t)
			sign := func() {
				cp, err := rel.Checkpointer(signer, CheckpointPolicy{})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := cp.Checkpoint(ctx); err != nil {
					t.Fatal(err)
				}
			}
			fill("old", 40)
			sign()
			entriesBefore := walkAll(t, rel)
			cpsBefore, err := db.query(ctx, `SELECT chain, seq FROM relay_audit_checkpoints ORDER BY chain, seq`)
			if err != nil {
				t.Fatal(err)
			}
			if len(entriesBefore) != 80 || len(cpsBefore) == 0 {
				t.Fatalf("old layout holds %d entries and %d checkpoints", len(entriesBefore), len(cpsBefore))
			}

			// The new binary starts, twice (a restart, or a second replica).
			for range 2 {
				if err := db.migrate(ctx); err != nil {
					t.Fatalf("upgrade: %v", err)
				}
			}
			history, err := db.query(ctx, `SELECT version, name FROM relay_schema_migrations ORDER BY version`)
			if err != nil {
				t.Fatal(err)
			}
			if want := [][2]string{{"1", "audit"}, {"2", "audit_checkpoints"}}; !slices.Equal(history, want) {
				t.Fatalf("relay history after the upgrade = %v, want %v", history, want)
			}
			stores, err := db.query(ctx, `SELECT version, name FROM schema_migrations WHERE version IN (2, 4) ORDER BY version`)
			if err != nil {
				t.Fatal(err)
			}
			if want := [][2]string{{"2", "relay_audit"}, {"4", "relay_audit_checkpoints"}}; !slices.Equal(stores, want) {
				t.Fatalf("store history rows 2, 4 = %v, want them kept as %v", stores, want)
			}
			if after := walkAll(t, rel); !slices.EqualFunc(after, entriesBefore, func(a, b AuditEntry) bool {
				return a.Chain == b.Chain && a.Seq == b.Seq && a.Hash == b.Hash && string(a.Event) == string(b.Event)
			}) {
				t.Fatalf("the log changed in the upgrade: %d entries before, %d after", len(entriesBefore), len(after))
			}
			if cps, err := db.query(ctx, `SELECT chain, seq FROM relay_audit_checkpoints ORDER BY chain, seq`); err != nil || !slices.Equal(cps, cpsBefore) {
				t.Fatalf("checkpoints after the upgrade = %v (%v), want %v", cps, err, cpsBefore)
			}

			// Appending goes on from the old heads, with a relay built by
			// the new binary, and everything verifies against the key.
			rel, err = db.newRel(cfg)
			if err != nil {
				t.Fatal(err)
			}
			fill("new", 20)
			sign()
			res, err := rel.VerifyAuditSigned(ctx, VerifyOptions{TrustedKeys: []ed25519.PublicKey{signer.PublicKey()}})
			if err != nil {
				t.Fatalf("verify after the upgrade: %v", err)
			}
			if res.Entries != 120 || res.Unsigned != 0 {
				t.Fatalf("verify after the upgrade: %+v, want 120 entries all signed", res.VerifyResult)
			}
			// The append-only guard came through the adoption.
			if err := db.exec(ctx, `UPDATE relay_audit SET type = 'x'`); err == nil || !strings.Contains(err.Error(), "append-only") {
				t.Fatalf("UPDATE relay_audit after the upgrade: %v, want it refused", err)
			}
		})
	}
}

// TestMigrateFresh: on an empty database, the store's migrations (0002 and
// 0004 now empty) and the relay's, in either order, make the relay's tables
// once, with their guards.
func TestMigrateFresh(t *testing.T) {
	for _, relayFirst := range []bool{false, true} {
		for name, open := range map[string]func(t *testing.T, ob consentOutbox, relayFirst bool) upgradeDB{
			"sqlite":   openFreshSQLite,
			"postgres": openFreshPostgres,
		} {
			t.Run(fmt.Sprintf("%s/relayFirst=%v", name, relayFirst), func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				k := keyring(t, hexA, "")
				db := open(t, newConsentOutbox(t, name, k), relayFirst)
				for range 2 {
					if err := db.migrate(ctx); err != nil {
						t.Fatal(err)
					}
				}
				history, err := db.query(ctx, `SELECT version, name FROM relay_schema_migrations ORDER BY version`)
				if err != nil {
					t.Fatal(err)
				}
				if want := [][2]string{{"1", "audit"}, {"2", "audit_checkpoints"}}; !slices.Equal(history, want) {
					t.Fatalf("relay history = %v, want %v", history, want)
				}
				if _, _, err := db.store.Record(ctx, record(t, k, "rec_1", "CAfresh1")); err != nil {
					t.Fatal(err)
				}
				n, err := db.query(ctx, `SELECT count(*), '' FROM relay_audit`)
				if err != nil || n[0][0] != "1" {
					t.Fatalf("relay_audit holds %v (%v), want the record's one entry", n, err)
				}
				if err := db.exec(ctx, `DELETE FROM relay_audit`); err == nil || !strings.Contains(err.Error(), "append-only") {
					t.Fatalf("DELETE FROM relay_audit: %v, want it refused", err)
				}
				if _, err := db.query(ctx, `SELECT chain, seq FROM relay_audit_checkpoints`); err != nil {
					t.Fatalf("relay_audit_checkpoints: %v", err)
				}
			})
		}
	}
}

// TestMigrateRefusesForeignTable: a relay_audit the store's history does
// not account for is not adopted: the relay's migration fails on it, and
// records nothing.
func TestMigrateRefusesForeignTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, db := sqliteDB(t, newConsentOutbox(t, "sqlite", keyring(t, hexA, "")))
	if err := db.exec(ctx, `CREATE TABLE relay_audit (x TEXT)`); err != nil {
		t.Fatal(err)
	}
	err := relaysqlite.Migrate(ctx, st.DB())
	if err == nil || !strings.Contains(err.Error(), "0001_audit.sql") {
		t.Fatalf("Migrate over a foreign relay_audit: %v, want migration 0001 to fail", err)
	}
	if n, err := db.query(ctx, `SELECT count(*), '' FROM relay_schema_migrations`); err != nil || n[0][0] != "0" {
		t.Fatalf("relay history after the failure: %v (%v), want empty", n, err)
	}
}

// consentOutbox is either driver's writer (the store's Options.Outbox).
type consentOutbox any

func newConsentOutbox(t *testing.T, dialect string, k *pii.Keyring) consentOutbox {
	t.Helper()
	var ob consentOutbox
	var err error
	if dialect == "postgres" {
		ob, err = NewOutbox(relaypg.New(nil), k, false)
	} else {
		ob, err = NewOutbox(relaysqlite.New(nil), k, false)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ob
}

func walkAll(t *testing.T, r *Relay) []AuditEntry {
	t.Helper()
	var out []AuditEntry
	if err := r.b.walk(context.Background(), func(e AuditEntry) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func sqliteDB(t *testing.T, ob consentOutbox) (*sqlitestore.Store, upgradeDB) {
	t.Helper()
	st, err := sqlitestore.Open(context.Background(), t.TempDir(), sqlitestore.Options{Outbox: ob.(*Outbox[*sql.Tx])})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	db := st.DB()
	return st, upgradeDB{
		store:  st,
		newRel: func(c Config) (*Relay, error) { return New(relaysqlite.New(db), c) },
		migrate: func(ctx context.Context) error {
			if err := st.Migrate(ctx); err != nil {
				return err
			}
			return relaysqlite.Migrate(ctx, db)
		},
		query: func(ctx context.Context, q string) ([][2]string, error) {
			rows, err := db.QueryContext(ctx, q)
			if err != nil {
				return nil, err
			}
			defer rows.Close()
			var out [][2]string
			for rows.Next() {
				var a, b sql.NullString
				if err := rows.Scan(&a, &b); err != nil {
					return nil, err
				}
				out = append(out, [2]string{a.String, b.String})
			}
			return out, rows.Err()
		},
		exec: func(ctx context.Context, q string) error { _, err := db.ExecContext(ctx, q); return err },
	}
}

func openLegacySQLite(t *testing.T, ob consentOutbox) upgradeDB {
	st, db := sqliteDB(t, ob)
	if err := sqlmigrate.ApplySQLite(context.Background(), st.DB(), "schema_migrations", legacyStoreMigrations(t, "sqlitestore", "sqlite")); err != nil {
		t.Fatal(err)
	}
	return db
}

func openFreshSQLite(t *testing.T, ob consentOutbox, relayFirst bool) upgradeDB {
	st, db := sqliteDB(t, ob)
	if relayFirst {
		db.migrate = func(ctx context.Context) error {
			if err := relaysqlite.Migrate(ctx, st.DB()); err != nil {
				return err
			}
			return st.Migrate(ctx)
		}
	}
	return db
}

func pgDB(t *testing.T, ob consentOutbox) (*pgstore.Store, upgradeDB) {
	t.Helper()
	st, err := pgstore.Open(context.Background(), testdb.Postgres(t), pgstore.Options{Outbox: ob.(*Outbox[pgx.Tx])})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pool := st.Pool()
	return st, upgradeDB{
		store:  st,
		newRel: func(c Config) (*Relay, error) { return New(relaypg.New(pool), c) },
		migrate: func(ctx context.Context) error {
			if err := st.Migrate(ctx); err != nil {
				return err
			}
			return relaypg.Migrate(ctx, pool)
		},
		query: func(ctx context.Context, q string) ([][2]string, error) { return pgQuery(ctx, pool, q) },
		exec:  func(ctx context.Context, q string) error { _, err := pool.Exec(ctx, q); return err },
	}
}

func pgQuery(ctx context.Context, pool *pgxpool.Pool, q string) ([][2]string, error) {
	rows, err := pool.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][2]string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return nil, err
		}
		out = append(out, [2]string{fmt.Sprint(vals[0]), fmt.Sprint(vals[1])})
	}
	return out, rows.Err()
}

func openLegacyPostgres(t *testing.T, ob consentOutbox) upgradeDB {
	st, db := pgDB(t, ob)
	ctx := context.Background()
	conn, err := st.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if err := sqlmigrate.ApplyPostgres(ctx, conn.Conn(), "schema_migrations", legacyStoreMigrations(t, "pgstore", "postgres")); err != nil {
		t.Fatal(err)
	}
	return db
}

func openFreshPostgres(t *testing.T, ob consentOutbox, relayFirst bool) upgradeDB {
	st, db := pgDB(t, ob)
	if relayFirst {
		db.migrate = func(ctx context.Context) error {
			if err := relaypg.Migrate(ctx, st.Pool()); err != nil {
				return err
			}
			return st.Migrate(ctx)
		}
	}
	return db
}
