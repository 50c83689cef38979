package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/consentline/consentline/internal/testdb"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/relay"
)

// TestSIGKILLWithDeliveriesInFlight kills `consentline serve` (SIGKILL: no
// shutdown, no deferred code) while the catch hook is holding a full set of
// deliveries, restarts it on the same database, and checks that every event
// still arrives, signed, with duplicates only of the deliveries that were
// cut off — each resent with the same webhook-id and body — and that the
// audit chain is intact.
//
// River retries a job left running by a dead process only after
// RescueStuckJobsAfter (relay.Config.RescueAfter; River's default is an
// hour). The server here runs with RELAY_RESCUE_AFTER=16s, just over the
// 15 s a delivery may take, instead of the default 30 s, and the hook holds
// the first attempts 7 s before the kill, so the new process's rescuer finds
// them due on its first run: River lets the new process lead (and rescue)
// only once the dead leader's lease ran out, 10–15 s after the kill.
func TestSIGKILLWithDeliveriesInFlight(t *testing.T) {
	t.Parallel()
	const (
		calls       = 50
		rescueAfter = 16 * time.Second
		holdFor     = 7 * time.Second // < relay.DefaultAttemptTimeout: still in flight at the kill
	)
	s := newSecrets(t)
	dbURL := testdb.Postgres(t)
	hook := newCatchHook(t)
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	hook.setPolicy(func(_ *hookReq, req *http.Request) int {
		select { // hold: the sender is killed while waiting for the answer
		case <-req.Context().Done():
		case <-release:
		}
		return http.StatusServiceUnavailable
	})

	env := serveEnv(t, s, dbURL, hook.hookURL())
	env["RELAY_RESCUE_AFTER"] = rescueAfter.String()
	logs := &lockedBuffer{}
	first := startServe(t, env, logs)

	// 50 calls to a decision (key 1 or 2), each then ended by Twilio's
	// status callback: 50 consent events and 50 call.completed events.
	tw := &twiliosim.Twilio{PublicBaseURL: env["PUBLIC_BASE_URL"], AuthToken: s.authToken, AccountSID: s.accountSID,
		HTTP: &http.Client{Timeout: 5 * time.Second}}
	driveCalls(t, tw, "dead", calls)

	// A full set of workers' deliveries is held; the rest wait in the queue.
	waitFor(t, 10*time.Second, "deliveries in flight", func() bool { return len(hook.requests()) >= relay.DefaultWorkers })
	inFlight := hook.requests()
	time.Sleep(time.Until(inFlight[len(inFlight)-1].At.Add(holdFor)))
	first.kill()
	// Normally exactly the first set; under heavy load an attempt may have
	// timed out (10 s) before the kill and its worker taken another event.
	held := hook.requests()
	if len(held) != relay.DefaultWorkers {
		t.Logf("%d deliveries reached the hook before the kill, %d workers", len(held), relay.DefaultWorkers)
	}
	heldIDs := map[string]bool{}
	for _, r := range held {
		heldIDs[r.Event.ID] = true
	}

	hook.setPolicy(func(*hookReq, *http.Request) int { return http.StatusOK })
	restarted := time.Now()
	startServe(t, env, logs)

	ids := auditedEvents(t, dbURL)
	if len(ids) != 2*calls {
		t.Fatalf("%d audited events, want %d", len(ids), 2*calls)
	}
	hook.waitDelivered(t, ids, 45*time.Second)
	t.Logf("all %d events delivered %s after the restart", len(ids), time.Since(restarted).Round(100*time.Millisecond))

	// Every request, first tries and resends alike: signed, its webhook-id
	// the event id, the same bytes each time.
	first1 := map[string]hookReq{}
	dupes := map[string]int{}
	for _, r := range hook.requests() {
		id := r.Header.Get(relay.HeaderID)
		if id == "" || id != r.Event.ID {
			t.Errorf("webhook-id %q for event %q", id, r.Event.ID)
		}
		if err := s.signer.Verify(r.Header, r.Body, r.At, relay.DefaultTolerance); err != nil {
			t.Errorf("event %s: signature: %v", id, err)
		}
		if f, seen := first1[id]; seen {
			dupes[id]++
			if !bytes.Equal(f.Body, r.Body) {
				t.Errorf("event %s resent with a different body", id)
			}
		} else {
			first1[id] = r
		}
		assertNoPHI(t, "a relay request", string(r.Body))
	}
	for id := range dupes {
		if !heldIDs[id] {
			t.Errorf("event %s was sent twice but was not in flight at the kill", id)
		}
	}
	for id := range heldIDs {
		if dupes[id] == 0 {
			t.Errorf("event %s, never answered before the kill, was not sent again", id)
		}
	}
	var consentEvents int
	for _, r := range first1 {
		if strings.HasPrefix(r.Event.Type, "consent.") {
			consentEvents++
		}
	}
	if consentEvents != calls {
		t.Errorf("%d consent events delivered, want %d", consentEvents, calls)
	}

	if code, out, errOut := runCLI(t, env, "audit", "verify"); code != 0 || !strings.Contains(out, fmt.Sprintf("audit chains intact: %d entries in ", 2*calls)) {
		t.Errorf("audit verify: exit %d\n%s%s", code, out, errOut)
	}
	// Delivered jobs leave nothing failed behind (the rescue's error is
	// history of a completed job).
	if code, out, errOut := runCLI(t, env, "relay", "list", "--failed"); code != 0 || !strings.Contains(out, "no failed deliveries") {
		t.Errorf("relay list --failed: exit %d\n%s%s", code, out, errOut)
	}
	assertNoPHI(t, "server logs", logs.String())
}

// driveCalls plays n calls against tw concurrently: incoming, a key press
// (1 for even calls, 2 for odd ones) at the speech Gather's action, then the
// status callback Twilio sends when the caller hangs up.
func driveCalls(t testing.TB, tw *twiliosim.Twilio, tag string, n int) {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 10)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c := &twiliosim.Call{Twilio: tw, SID: callSID(tag, i), From: callerNumber(i), To: calledNumber}
			resp, err := c.Start(ctx, ivr.PathIncoming)
			if err != nil {
				errs <- err
				return
			}
			g, ok := resp.SpeechGather()
			if !ok {
				errs <- fmt.Errorf("call %d: no speech Gather", i)
				return
			}
			digits := []string{"1", "2"}[i%2]
			if err := answerKey(ctx, c, g.Attr("action"), digits); err != nil {
				errs <- err
				return
			}
			status, _, err := tw.Post(ctx, tw.PublicBaseURL+ivr.PathStatus,
				c.Params(url.Values{"CallStatus": {"completed"}, "CallDuration": {"31"}}))
			if err == nil && status != http.StatusNoContent && status != http.StatusOK {
				err = fmt.Errorf("call %d: status callback answered %d", i, status)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// auditedEvents lists the event ids in the audit log, chain by chain, each
// in seq order.
func auditedEvents(t testing.TB, dbURL string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT event_id FROM relay_audit ORDER BY chain, seq`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// waitFor polls cond every 20 ms until it holds, or fails the test.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
