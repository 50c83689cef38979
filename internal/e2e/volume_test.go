package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/consentline/consentline/relay"
)

// TestThousandDecisionsDeadLetterReplay takes 1,000 decisions through
// consent.Service, 20 at a time, on PostgreSQL with the outbox and a running
// relay, while the catch hook rejects one event with a 400. Then, with the
// real binary as an operator would: the audit chain has 1,000 entries and
// verifies, `relay list --failed` shows exactly the rejected event as a dead
// letter and no PHI, and `relay replay` gets it delivered.
func TestThousandDecisionsDeadLetterReplay(t *testing.T) {
	t.Parallel()
	const (
		decisions = 1000
		workers   = 20
		rejected  = 500 // the call whose event the hook answers 400 (once)
	)
	ctx := context.Background()
	hook := newCatchHook(t)
	rejectedSID := callSID("1000d", rejected)
	var rejections atomic.Int32
	hook.setPolicy(func(r *hookReq, _ *http.Request) int {
		if r.Event.CallSID == rejectedSID && rejections.Add(1) == 1 {
			return http.StatusBadRequest
		}
		return http.StatusOK
	})
	st := newStack(t, stackOptions{hookURL: hook.hookURL()})
	st.start(t)

	ids := make([]string, decisions)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	began := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= decisions {
					return
				}
				rec, err := st.decide(ctx, callSID("1000d", i), i)
				if err != nil {
					errs <- err
					return
				}
				ids[i] = rec.ID
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d decisions recorded in %s", decisions, time.Since(began).Round(time.Millisecond))
	deadID := ids[rejected]

	others := append(append([]string{}, ids[:rejected]...), ids[rejected+1:]...)
	hook.waitDelivered(t, others, 60*time.Second)
	waitFor(t, 10*time.Second, "the rejected event's dead letter", func() bool {
		ds, err := st.relay.Deliveries(ctx, deadID)
		return err == nil && len(ds) == 1 && ds[0].State == "cancelled"
	})
	if _, ok := hook.delivered()[deadID]; ok {
		t.Fatal("the rejected event was delivered without a replay")
	}
	t.Logf("%d events delivered, 1 dead-lettered, %s after the first decision", len(others), time.Since(began).Round(time.Millisecond))

	env := serveEnv(t, st.secrets, st.dbURL, hook.hookURL())
	code, out, errOut := runCLI(t, env, "audit", "verify")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("audit chains intact: %d entries in ", decisions)) {
		t.Fatalf("audit verify: exit %d\n%s%s", code, out, errOut)
	}

	code, out, errOut = runCLI(t, env, "relay", "list", "--failed")
	if code != 0 {
		t.Fatalf("relay list --failed: exit %d\n%s%s", code, out, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], deadID) || !strings.Contains(lines[1], "dead-letter") || !strings.Contains(lines[1], "400") {
		t.Fatalf("relay list --failed should show the one dead letter (event %s, 400):\n%s", deadID, out)
	}
	for _, s := range append(phi, "eyJ", rejectedSID) {
		if strings.Contains(out+errOut, s) {
			t.Errorf("relay list --failed shows %q:\n%s", s, out)
		}
	}

	code, out, errOut = runCLI(t, env, "relay", "replay", deadID)
	if code != 0 || !strings.Contains(out, "queued for delivery again") {
		t.Fatalf("relay replay: exit %d\n%s%s", code, out, errOut)
	}
	hook.waitDelivered(t, []string{deadID}, 15*time.Second)
	waitFor(t, 10*time.Second, "the replayed delivery to complete", func() bool {
		ds, err := st.relay.Deliveries(ctx, deadID)
		return err == nil && len(ds) == 2 && ds[1].State == "completed"
	})
	if code, out, errOut := runCLI(t, env, "relay", "list", "--failed"); code != 0 || !strings.Contains(out, "no failed deliveries") {
		t.Errorf("relay list --failed after the replay: exit %d\n%s%s", code, out, errOut)
	}

	// Each event went out once, except the rejected one (twice); signed.
	perID := map[string]int{}
	for _, r := range hook.requests() {
		perID[r.Event.ID]++
		if err := st.signer.Verify(r.Header, r.Body, r.At, relay.DefaultTolerance); err != nil {
			t.Errorf("event %s: %v", r.Event.ID, err)
		}
	}
	for _, id := range ids {
		want := 1
		if id == deadID {
			want = 2
		}
		if perID[id] != want {
			t.Errorf("event %s sent %d times, want %d", id, perID[id], want)
		}
	}
	if len(perID) != decisions {
		t.Errorf("the hook saw %d distinct events, want %d", len(perID), decisions)
	}
	assertNoPHI(t, "relay logs", st.logs.String())
}
