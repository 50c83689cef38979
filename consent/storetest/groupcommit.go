package storetest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
)

// GroupCommit checks a store's group commit: Records arriving while a
// transaction is in flight are committed together in the next one, the
// store's after-insert hook sees them in (call SID, script id) order, a
// duplicate inside a batch gets the first one back, and a record the hook
// refuses fails alone while the rest of its batch commits. open returns an
// empty store committing one batch at a time whose after-insert hook calls
// hook with each batch; countRecords counts its consent_records rows.
func GroupCommit(t *testing.T, open func(t *testing.T, hook func([]consent.Record) error) consent.Store, countRecords func() int) {
	ctx := context.Background()
	var (
		mu      sync.Mutex
		batches [][]consent.Record
	)
	hold := make(chan struct{})
	var held atomic.Bool
	poison := CallSID()
	s := open(t, func(recs []consent.Record) error {
		mu.Lock()
		batches = append(batches, recs)
		mu.Unlock()
		if held.CompareAndSwap(false, true) {
			<-hold // the first transaction stays open while the others queue
		}
		for _, r := range recs {
			if r.CallSID == poison {
				return errors.New("hook refuses this one")
			}
		}
		return nil
	})

	first := make(chan error, 1)
	go func() {
		_, _, err := s.Record(ctx, NewRecord(CallSID(), "hipaa-consent"))
		first <- err
	}()
	for !held.Load() {
		time.Sleep(time.Millisecond)
	}
	const n = 30
	recs := make([]consent.Record, n)
	for i := range recs {
		recs[i] = NewRecord(CallSID(), "hipaa-consent")
	}
	recs[7].CallSID = poison
	dup := NewRecord(recs[3].CallSID, recs[3].Script.ID) // same call and script as 3, queued after it
	type result struct {
		rec     consent.Record
		created bool
		err     error
	}
	results := make([]result, n+1)
	var wg sync.WaitGroup
	for i := range n + 1 {
		rec := dup
		if i < n {
			rec = recs[i]
		}
		wg.Go(func() {
			if i == n {
				time.Sleep(100 * time.Millisecond) // after recs[3] in the queue
			}
			var r result
			r.rec, r.created, r.err = s.Record(ctx, rec)
			results[i] = r
		})
	}
	time.Sleep(300 * time.Millisecond) // all queued behind the held transaction
	close(hold)
	wg.Wait()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for i, r := range results[:n] {
		switch {
		case i == 7:
			if r.err == nil {
				t.Errorf("poison record stored")
			}
		case r.err != nil || !r.created || r.rec.ID != recs[i].ID:
			t.Errorf("record %d: created=%v err=%v (the poison record sank it?)", i, r.created, r.err)
		}
	}
	if d := results[n]; d.err != nil || d.created || d.rec.ID != recs[3].ID {
		t.Errorf("duplicate in the batch: created=%v id=%s err=%v, want record 3 (%s) back", d.created, d.rec.ID, d.err, recs[3].ID)
	}
	if _, err := s.Get(ctx, poison, "hipaa-consent"); !errors.Is(err, consent.ErrNotFound) {
		t.Errorf("poison record readable: %v", err)
	}
	if got := countRecords(); got != n {
		t.Errorf("%d records stored, want %d (the held one and %d of %d)", got, n, n-1, n)
	}
	mu.Lock()
	defer mu.Unlock()
	// batches: the held one, the whole queue (failed on the poison record),
	// then each of its records alone.
	if len(batches) < 2 || len(batches[1]) != n {
		sizes := []int{}
		for _, b := range batches {
			sizes = append(sizes, len(b))
		}
		t.Fatalf("hook batch sizes %v, want the %d queued records together second", sizes, n)
	}
	if !slices.IsSortedFunc(batches[1], func(a, b consent.Record) int { return strings.Compare(a.CallSID, b.CallSID) }) {
		t.Errorf("hook got the batch out of call SID order")
	}
}
