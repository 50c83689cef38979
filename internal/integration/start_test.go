package integration

import (
	"context"
	"sync"
	"testing"

	"github.com/consentline/consentline/consent/pgstore"
	"github.com/consentline/consentline/internal/pii"
	"github.com/consentline/consentline/internal/testdb"
	"github.com/consentline/consentline/relay"
	"github.com/consentline/consentline/relay/relaypg"
)

// startReplicas runs open on n goroutines released together, as replicas
// of a fresh deploy start against one empty database.
func startReplicas(t *testing.T, n int, open func(ctx context.Context, i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if err := open(context.Background(), i); err != nil {
				t.Errorf("replica %d: %v", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
}

// TestReplicasStartTogether: every replica opens and migrates the same
// empty database at the same moment, with the relay's outbox hook, and
// creates or reads the shared pseudonym key. All must start and agree on
// the key (patient_ref must not depend on the instance).
func TestReplicasStartTogether(t *testing.T) {
	t.Parallel()
	dbURL := testdb.Postgres(t)
	keys, err := pii.NewKeyring(testKey)
	if err != nil {
		t.Fatal(err)
	}
	const replicas = 4
	refs := make([]string, replicas)
	startReplicas(t, replicas, func(ctx context.Context, i int) error {
		outbox, err := relay.NewOutbox(relaypg.New(nil), keys, true)
		if err != nil {
			return err
		}
		st, err := pgstore.Open(ctx, dbURL, pgstore.Options{Migrate: true, Outbox: outbox})
		if err != nil {
			return err
		}
		defer st.Close()
		p, err := pii.LoadPseudonymizer(ctx, st, keys)
		if err != nil {
			return err
		}
		refs[i] = p.Ref("+14155550100")
		return nil
	})
	for i := range refs {
		if refs[i] == "" || refs[i] != refs[0] {
			t.Errorf("replica %d pseudonymizes as %q, replica 0 as %q: the key is not shared", i, refs[i], refs[0])
		}
	}
}

// TestReplicasMigrateRiverTogether: serve's openDatabase also runs River's
// migrations (relaypg.Migrate) at start; replicas doing it at the same
// moment must take turns rather than collide.
func TestReplicasMigrateRiverTogether(t *testing.T) {
	t.Parallel()
	dbURL := testdb.Postgres(t)
	startReplicas(t, 4, func(ctx context.Context, i int) error {
		st, err := pgstore.Open(ctx, dbURL, pgstore.Options{Migrate: true})
		if err != nil {
			return err
		}
		defer st.Close()
		return relaypg.Migrate(ctx, st.Pool())
	})
}

// TestReplicasStartAfterMigrate: the workaround the README gives until
// then: `consentline migrate` once (Railway's pre-deploy command), after
// which replicas starting together find nothing to migrate.
func TestReplicasStartAfterMigrate(t *testing.T) {
	t.Parallel()
	dbURL := testdb.Postgres(t)
	open := func(ctx context.Context, i int) error {
		st, err := pgstore.Open(ctx, dbURL, pgstore.Options{Migrate: true})
		if err != nil {
			return err
		}
		defer st.Close()
		return relaypg.Migrate(ctx, st.Pool())
	}
	if err := open(context.Background(), -1); err != nil { // consentline migrate
		t.Fatal(err)
	}
	startReplicas(t, 4, open)
}
