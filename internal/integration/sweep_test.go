package integration

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	twilioclient "github.com/twilio/twilio-go/client"
	twilioapi "github.com/twilio/twilio-go/rest/api/v2010"

	"github.com/consentline/consentline/consent"
)

// twilioREST is a local stand-in for Twilio's REST API: Fetch Call
// (GET /2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json, HTTP basic auth
// with the account SID and auth token), answering with the status a test
// set for the call, or Twilio's 404 error body.
type twilioREST struct {
	srv      *httptest.Server
	mu       sync.Mutex
	status   map[string]string
	fetched  map[string]int
	rejected int
	// updated lists each Update Call (POST …/Calls/{Sid}.json with Url and
	// Method) as "sid url", in order.
	updated []string
}

func (c *cluster) startTwilioREST() {
	tr := &twilioREST{status: map[string]string{}, fetched: map[string]int{}}
	prefix := "/2010-04-01/Accounts/" + accountSID + "/Calls/"
	tr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		sid, isCall := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, prefix), ".json")
		tr.mu.Lock()
		defer tr.mu.Unlock()
		if r.Method == http.MethodPost && ok && user == accountSID && pass == authToken && strings.HasPrefix(r.URL.Path, prefix) && isCall {
			// Update Call: redirect a live call to new TwiML.
			if err := r.ParseForm(); err != nil || r.PostForm.Get("Method") != http.MethodPost || !strings.HasPrefix(r.PostForm.Get("Url"), publicBase+"/") {
				tr.rejected++
				http.Error(w, `{"code":21205,"message":"Url is not a valid URL","status":400}`, http.StatusBadRequest)
				return
			}
			tr.updated = append(tr.updated, sid+" "+r.PostForm.Get("Url"))
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"sid": sid, "account_sid": accountSID, "status": "in-progress"})
			return
		}
		if r.Method != http.MethodGet || !ok || user != accountSID || pass != authToken || !strings.HasPrefix(r.URL.Path, prefix) || !isCall {
			tr.rejected++
			http.Error(w, `{"code":20003,"message":"Authenticate","status":401}`, http.StatusUnauthorized)
			return
		}
		tr.fetched[sid]++
		status, known := tr.status[sid]
		w.Header().Set("Content-Type", "application/json")
		if !known {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"code":20404,"message":"The requested resource was not found","status":404}`))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"sid": sid, "account_sid": accountSID, "status": status, "duration": "41"})
	}))
	c.rest = tr
	c.t.Cleanup(tr.srv.Close)
}

func (tr *twilioREST) updates() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.updated...)
}

func (tr *twilioREST) set(sid, status string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.status[sid] = status
}

// twilioAPI is twilio-go's REST client for the test account, its requests
// sent to the local stand-in instead of api.twilio.com.
func (c *cluster) twilioAPI() *twilioapi.ApiService {
	target, _ := url.Parse(c.rest.srv.URL)
	cl := &twilioclient.Client{
		Credentials: twilioclient.NewCredentials(accountSID, authToken),
		HTTPClient: &http.Client{Timeout: 5 * time.Second, Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.URL.Host != "api.twilio.com" {
				return nil, &url.Error{Op: r.Method, URL: r.URL.String(), Err: http.ErrNotSupported}
			}
			r = r.Clone(r.Context())
			r.URL.Scheme, r.URL.Host = target.Scheme, target.Host
			return http.DefaultTransport.RoundTrip(r)
		})},
	}
	cl.SetAccountSid(accountSID)
	return twilioapi.NewApiServiceWithClient(cl)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// A caller hangs up while PostgreSQL is down: the status callback gets 503
// and Twilio never sends it again. Once PostgreSQL is back, the sweep asks
// Twilio about the calls that started and have no decision, and records the
// ended one as no_response with its call.completed event, exactly once,
// leaving the call still in progress alone.
func TestLostStatusCallbackIsSwept(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterOptions{proxyPostgres: true, instances: 2})
	ctx := context.Background()
	c.warmUp(t)

	ended, ongoing := c.newCall(ctx), c.newCall(ctx)
	c.rest.set(ended.sid, "completed")
	c.rest.set(ongoing.sid, "in-progress")
	// /voice/incoming remembers a call after answering: wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := c.admin.QueryRow(ctx, `SELECT count(*) FROM started_calls WHERE call_sid IN ($1, $2)`, ended.sid, ongoing.sid).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 started calls remembered", n)
		}
		time.Sleep(20 * time.Millisecond)
	}

	c.pgProxy.Refuse()
	tc := c.simCall(1, ended)
	status, _, err := tc.Twilio.Post(ctx, publicBase+"/voice/status", tc.Params(url.Values{"CallStatus": {"completed"}, "CallDuration": {"41"}}))
	if err != nil || status != http.StatusServiceUnavailable {
		t.Fatalf("status callback with PostgreSQL down: %d %v, want 503", status, err)
	}
	// The sweep during the outage fails and records nothing.
	if n, err := c.instances[0].app.SweepEnded(ctx, time.Now()); err == nil || n != 0 {
		t.Fatalf("sweep with PostgreSQL down: closed %d, err %v; want an error", n, err)
	}
	if err := c.pgProxy.Resume(); err != nil {
		t.Fatal(err)
	}

	// Both instances sweep at once, as every replica does, each trying
	// again after a failure as its next tick would (the first queries after
	// the outage find the pool's dead connections).
	var wg sync.WaitGroup
	closed := make([]int, len(c.instances))
	for i, in := range c.instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for try := 0; ; try++ {
				n, err := in.app.SweepEnded(ctx, time.Now())
				if err == nil {
					closed[i] = n
					return
				}
				if try == 50 {
					t.Errorf("instance %d sweep: %v", i, err)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	wg.Wait()

	if n := c.records(ended.sid); n != 1 {
		t.Fatalf("ended call: %d records after the sweep, want 1", n)
	}
	if d := c.stored(ended.sid); d != consent.NoResponse {
		t.Errorf("ended call recorded %s, want no_response", d)
	}
	var source string
	if err := c.admin.QueryRow(ctx, `SELECT source FROM consent_records WHERE call_sid = $1`, ended.sid).Scan(&source); err != nil || source != string(consent.SourceStatusCallback) {
		t.Errorf("source %q, %v; want status_callback", source, err)
	}
	var completed int
	if err := c.admin.QueryRow(ctx, `SELECT count(*) FROM relay_audit WHERE event_id = $1 AND type = 'call.completed'`, "cc_"+ended.sid).Scan(&completed); err != nil || completed != 1 {
		t.Errorf("call.completed audit entries for the ended call: %d, %v; want 1", completed, err)
	}
	if n := c.records(ongoing.sid); n != 0 {
		t.Errorf("a call still in progress was closed: %d records", n)
	}
	if closed[0]+closed[1] < 1 {
		t.Errorf("sweeps report %v calls closed, want the ended call", closed)
	}
	c.rest.mu.Lock()
	defer c.rest.mu.Unlock()
	if c.rest.rejected != 0 || c.rest.fetched[ended.sid] == 0 || c.rest.fetched[ongoing.sid] == 0 {
		t.Errorf("Twilio REST: %d rejected requests, fetched %v", c.rest.rejected, c.rest.fetched)
	}
	// A second sweep finds only the ongoing call left to ask about.
	before := c.rest.fetched[ended.sid]
	c.rest.mu.Unlock()
	if n, err := c.instances[0].app.SweepEnded(ctx, time.Now()); err != nil || n != 0 {
		t.Errorf("second sweep: closed %d, %v", n, err)
	}
	c.rest.mu.Lock()
	if c.rest.fetched[ended.sid] != before {
		t.Errorf("the settled call was fetched again")
	}
}
