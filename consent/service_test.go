package consent_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/memlock"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/pii"
)

// countingLocker counts lock attempts on a real memlock.
type countingLocker struct {
	*memlock.Locker
	tries atomic.Int64
}

func (l *countingLocker) TryAcquire(ctx context.Context, key string) (context.Context, func(), error) {
	l.tries.Add(1)
	return l.Locker.TryAcquire(ctx, key)
}

// gatedStore holds every Record until gate is closed, so that concurrent
// deliveries are guaranteed to overlap.
type gatedStore struct {
	consent.Store
	gate    chan struct{}
	entered chan struct{}
	records atomic.Int64
}

func (s *gatedStore) Record(ctx context.Context, rec consent.Record) (consent.Record, bool, error) {
	if s.records.Add(1) == 1 {
		close(s.entered)
	}
	<-s.gate
	return s.Store.Record(ctx, rec)
}

func newService(t *testing.T, store consent.Store, locker consent.Locker) *consent.Service {
	t.Helper()
	keys, err := pii.NewKeyring([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	return consent.NewService(consent.Config{
		Store: store, Locker: locker, Seal: keys.SealFor, Open: keys.OpenFor,
		PatientRef: pii.NewPseudonymizer([]byte("pseudonym-key-0123456789abcdef01")).Ref,
	})
}

// Deliveries of one call on one instance share one decision: one lock
// attempt and one insert, not one each queued behind the other; exactly one
// of them reports the record as created, and all get the same record, even
// those whose own answer disagreed.
func TestConcurrentDeliveriesCoalesce(t *testing.T) {
	ctx := context.Background()
	sq, err := sqlitestore.Open(ctx, t.TempDir(), sqlitestore.Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sq.Close() })
	store := &gatedStore{Store: sq, gate: make(chan struct{}), entered: make(chan struct{})}
	locker := &countingLocker{Locker: memlock.New()}
	svc := newService(t, store, locker)

	const n = 40
	call := consent.Call{CallSID: "CA0123456789abcdef0123456789abcdef",
		Script: consent.ScriptRef{ID: "hipaa", Version: "1", Language: "en-US", SHA256: "00"},
		From:   "+14155550123", To: "+18005550199"}
	outs := make([]consent.Outcome, n)
	errs := make([]error, n)
	var started, done sync.WaitGroup
	for i := range n {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			a := consent.Answer{Call: call, Source: consent.SourceDTMF, Intent: consent.Agree,
				Heard: consent.Heard{MS: 9000, MustHearComplete: true, Timing: consent.TimingEstimated}}
			if i%2 == 1 {
				a.Intent = consent.Decline
			}
			started.Done()
			outs[i], errs[i] = svc.Decide(ctx, a)
		}()
	}
	started.Wait()
	<-store.entered
	time.Sleep(100 * time.Millisecond) // let every delivery reach the decision in flight
	close(store.gate)
	done.Wait()

	created := 0
	for i, out := range outs {
		if errs[i] != nil {
			t.Fatalf("delivery %d: %v", i, errs[i])
		}
		if !out.Recorded || out.Record.ID != outs[0].Record.ID {
			t.Fatalf("delivery %d got record %q, delivery 0 %q", i, out.Record.ID, outs[0].Record.ID)
		}
		if out.Created {
			created++
		}
	}
	if created != 1 {
		t.Errorf("%d deliveries report creating the record, want 1", created)
	}
	// Without coalescing every delivery tries the lock at least once.
	if tries, records := locker.tries.Load(), store.records.Load(); tries > n/4 || records > n/4 {
		t.Errorf("%d deliveries made %d lock attempts and %d inserts; want them shared", n, tries, records)
	}
}

// A delivery that finds the call's lock taken by another instance waits for
// that holder's decision and reads it back, without inserting.
func TestBusyLockReadsHolderDecisionBack(t *testing.T) {
	ctx := context.Background()
	sq, err := sqlitestore.Open(ctx, t.TempDir(), sqlitestore.Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sq.Close() })
	gate := make(chan struct{})
	close(gate)
	store := &gatedStore{Store: sq, gate: gate, entered: make(chan struct{})}
	locker := &countingLocker{Locker: memlock.New()}
	svc := newService(t, store, locker)
	call := consent.Call{CallSID: "CAfedcba9876543210fedcba9876543210",
		Script: consent.ScriptRef{ID: "hipaa", Version: "1", Language: "en-US", SHA256: "00"}}

	// Another instance holds the call's lock while it decides.
	_, release, err := locker.Acquire(ctx, "call:"+call.CallSID)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan consent.Outcome, 1)
	go func() {
		out, err := svc.Decide(ctx, consent.Answer{Call: call, Source: consent.SourceDTMF, Intent: consent.Decline,
			Heard: consent.Heard{Timing: consent.TimingEstimated}})
		if err != nil {
			t.Error(err)
		}
		got <- out
	}()
	time.Sleep(50 * time.Millisecond)
	// It records its decision (a grant) straight in the shared store, then
	// releases.
	theirs := consent.Record{ID: "11111111-2222-3333-4444-555555555555", CallSID: call.CallSID, Script: call.Script,
		Decision: consent.Granted, Source: consent.SourceDTMF, PatientRef: "ref", DecidedAt: time.Now().UTC(),
		Timing: consent.TimingEstimated, MustHearComplete: true}
	if _, created, err := sq.Record(ctx, theirs); err != nil || !created {
		t.Fatalf("holder's record: created %v, %v", created, err)
	}
	release()

	out := <-got
	if !out.Recorded || out.Created || out.Record.ID != theirs.ID || out.Record.Decision != consent.Granted {
		t.Fatalf("waiter's outcome %+v, want the holder's grant read back", out)
	}
	if n := store.records.Load(); n != 0 {
		t.Errorf("the waiter inserted %d times; it should only read the holder's decision", n)
	}
}
