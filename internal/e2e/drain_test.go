package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/consent/pgstore"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/democall"
	"github.com/consentline/consentline/internal/testdb"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
	"github.com/consentline/consentline/twiml"
)

// TestSIGTERMUnderLoad sends SIGTERM to a real `consentline serve` while
// callers keep it busy and its relay has deliveries in flight (the catch
// hook holds them), on the embedded database and on PostgreSQL. It checks
// the drain: every webhook sent before the signal got a whole answer (no
// reset); every call whose answer was read back has its record; /readyz
// answered 503 while the server drained; the deliveries in flight were
// handed back (none left running or counted as failed); exit 0 within
// railway.toml's drainingSeconds.
func TestSIGTERMUnderLoad(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { runSIGTERMUnderLoad(t, "") })
	t.Run("postgres", func(t *testing.T) { runSIGTERMUnderLoad(t, testdb.Postgres(t)) })
}

// webhookResult is one webhook the load sent.
type webhookResult struct {
	sentAt time.Time
	err    error
}

func runSIGTERMUnderLoad(t *testing.T, dbURL string) {
	const callers = 16
	window := railwayDrainingSeconds(t)
	s := newSecrets(t)
	hook := newCatchHook(t)
	hook.setPolicy(func(_ *hookReq, req *http.Request) int {
		<-req.Context().Done() // held until the relay lets go
		return http.StatusServiceUnavailable
	})
	env := serveEnv(t, s, dbURL, hook.hookURL())
	logs := &lockedBuffer{}
	p := startServe(t, env, logs)

	tw := &twiliosim.Twilio{PublicBaseURL: env["PUBLIC_BASE_URL"], AuthToken: s.authToken, AccountSID: s.accountSID,
		HTTP: &http.Client{Timeout: 10 * time.Second}}
	ctx := context.Background()
	var (
		mu       sync.Mutex
		results  []webhookResult
		readBack []string // calls whose decision was read back
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	send := func(f func() error) bool {
		r := webhookResult{sentAt: time.Now()}
		r.err = f()
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
		return r.err == nil
	}
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				c := &twiliosim.Call{Twilio: tw, SID: callSID("d5a1", i), From: callerNumber(i), To: calledNumber}
				var g twiliosim.Verb
				if !send(func() error {
					resp, err := c.Start(ctx, ivr.PathIncoming)
					if err == nil {
						var ok bool
						if g, ok = resp.SpeechGather(); !ok {
							err = fmt.Errorf("call %d: no speech Gather", i)
						}
					}
					return err
				}) {
					return
				}
				var decided bool
				if !send(func() error {
					resp, err := c.TwiML(ctx, g.Attr("action"), c.Params(url.Values{"Digits": {[]string{"1", "2"}[i%2]}}))
					decided = err == nil && resp.HangsUp()
					return err
				}) {
					return
				}
				if decided {
					mu.Lock()
					readBack = append(readBack, c.SID)
					mu.Unlock()
				}
			}
		}()
	}

	// Load until the relay has deliveries in flight, and a little longer.
	waitFor(t, 15*time.Second, "deliveries in flight", func() bool { return len(hook.requests()) >= 4 })

	// A call is on its media stream when the signal comes: the drain
	// closes the stream (going away) and keeps what it measured.
	streamCall := &twiliosim.Call{Twilio: tw, SID: callSID("d5a1", 0), From: callerNumber(0), To: calledNumber}
	streamed := make(chan *twiliosim.StreamResult, 1)
	{
		resp, err := streamCall.TwiML(ctx, env["PUBLIC_BASE_URL"]+ivr.PathIncoming, streamCall.Params(url.Values{"CallStatus": {"ringing"}}))
		if err != nil {
			t.Fatal(err)
		}
		st, ok := resp.Find("Stream")
		if !ok {
			t.Fatalf("no <Stream>:\n%s", resp.Raw)
		}
		params := map[string]string{}
		for _, prm := range st.Children {
			params[prm.Attr("name")] = prm.Attr("value")
		}
		stw := *tw
		stw.Target = env["PUBLIC_BASE_URL"]
		audio := democall.Generate()
		go func() {
			res, err := stw.Stream(ctx, st.Attr("url"), twiliosim.StreamPlay{CallSID: streamCall.SID, CustomParameters: params,
				Inbound: audio.Inbound, Outbound: audio.Outbound, Realtime: true})
			if err != nil {
				t.Errorf("stream: %v", err)
			}
			streamed <- res
		}()
		time.Sleep(time.Second) // the disclosure has started on the stream
	}
	time.Sleep(300 * time.Millisecond)
	signalAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	readyz := pollReadyz(env["PORT"], p.exited)
	select {
	case <-p.exited:
	case <-time.After(window + 5*time.Second):
		t.Fatalf("still running %s after SIGTERM:\n%s", time.Since(signalAt), logs.String())
	}
	took := time.Since(signalAt)
	wg.Wait()

	if p.err != nil {
		t.Errorf("exit: %v, want 0\n%s", p.err, logs.String())
	}
	if took > window {
		t.Errorf("exited %s after SIGTERM, past railway.toml's drainingSeconds (%s)", took, window)
	}
	var before, after, refused int
	for _, r := range results {
		if r.sentAt.Before(signalAt) {
			before++
			if r.err != nil {
				t.Errorf("a webhook sent %s before SIGTERM got no whole answer: %v", signalAt.Sub(r.sentAt), r.err)
			}
			continue
		}
		after++
		if r.err != nil {
			refused++
		}
	}
	statuses := <-readyz
	saw503 := false
	for _, st := range statuses {
		if st == http.StatusServiceUnavailable {
			saw503 = true
		} else if saw503 && st != 0 {
			t.Errorf("/readyz answered %d after it had answered 503", st)
		}
	}
	if !saw503 {
		t.Errorf("/readyz never answered 503 after SIGTERM (%v)", statuses)
	}

	// Every decision read back is stored; no delivery was left running or
	// counted as failed: the ones cut off are available again.
	store, jobs := openStore(t, dbURL, env["DATA_DIR"])
	script := twiml.Builtin().Default().ID
	for _, sid := range readBack {
		if _, err := store.Get(ctx, sid, script); err != nil {
			t.Errorf("call %s was read its decision but has no record: %v", sid, err)
		}
	}
	if res := <-streamed; res == nil || res.CloseCode != 1001 {
		t.Errorf("the media stream open at SIGTERM ended with %+v; want closed going away (1001)", res)
	}
	if m, err := store.StreamMeasurement(ctx, streamCall.SID, script); err != nil || m.PromptOnsetMS < 0 {
		t.Errorf("the stream's measurement was not kept through the drain: %+v, %v", m, err)
	}
	if jobs["running"] != 0 || jobs["retryable"] != 0 || jobs["available"] == 0 {
		t.Errorf("delivery jobs after the drain by state: %v; want none running or retryable, the held ones available", jobs)
	}
	t.Logf("SIGTERM after %d webhooks (%d read-backs) with %d deliveries held: exit 0 after %s; after the signal %d webhooks sent, %d refused; /readyz polled %d times; jobs %v",
		before, len(readBack), len(hook.requests()), took.Round(10*time.Millisecond), after, refused, len(statuses), jobs)
	assertNoPHI(t, "server logs", logs.String())
}

// pollReadyz polls /readyz every 10 ms until exited closes, then sends the
// statuses seen (0: no answer).
func pollReadyz(port string, exited <-chan struct{}) <-chan []int {
	out := make(chan []int, 1)
	go func() {
		client := &http.Client{Timeout: time.Second}
		var statuses []int
		for {
			select {
			case <-exited:
				out <- statuses
				return
			default:
			}
			st := 0
			if resp, err := client.Get("http://127.0.0.1:" + port + "/readyz"); err == nil {
				st = resp.StatusCode
				resp.Body.Close()
			}
			statuses = append(statuses, st)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return out
}

// openStore opens the database serve used (PostgreSQL at dbURL, else the
// embedded one in dataDir) once it has exited, and counts its delivery
// jobs by state.
func openStore(t *testing.T, dbURL, dataDir string) (consent.Store, map[string]int) {
	t.Helper()
	ctx := context.Background()
	const q = `SELECT state, count(*) FROM river_job GROUP BY state`
	jobs := map[string]int{}
	count := func(rows interface {
		Next() bool
		Scan(dest ...any) error
		Err() error
	}, err error) {
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var state string
			var n int
			if err := rows.Scan(&state, &n); err != nil {
				t.Fatal(err)
			}
			jobs[state] = n
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	if dbURL != "" {
		st, err := pgstore.Open(ctx, dbURL, pgstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		rows, err := st.Pool().Query(ctx, q)
		if err == nil {
			defer rows.Close()
		}
		count(rows, err)
		return st, jobs
	}
	st, err := sqlitestore.Open(ctx, dataDir, sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rows, err := st.DB().QueryContext(ctx, q)
	if err == nil {
		defer rows.Close()
	}
	count(rows, err)
	return st, jobs
}

// railwayDrainingSeconds is railway.toml's drainingSeconds: how long after
// SIGTERM Railway sends SIGKILL.
func railwayDrainingSeconds(t *testing.T) time.Duration {
	t.Helper()
	toml, err := os.ReadFile("../../railway.toml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^drainingSeconds\s*=\s*(\d+)`).FindSubmatch(toml)
	if m == nil {
		t.Fatal(errors.New("railway.toml sets no drainingSeconds"))
	}
	n, _ := strconv.Atoi(string(m[1]))
	return time.Duration(n) * time.Second
}
