package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/consentline/consentline/internal/democall"
	"github.com/consentline/consentline/internal/testdb"
	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
)

// callScript is one whole call as a caller might make it, each with numbers
// and words of its own, so that a leak in the logs names the call it came
// from. The logs test plays every script against a real `consentline serve`
// and then hangs up (Twilio's status callback); a new kind of call — one
// over the media stream, say — is one more entry in logScripts, its play
// opening the stream as Twilio does.
type callScript struct {
	name     string
	from, to string   // the caller's and the called number (E.164)
	said     []string // everything the caller says: PHI as much as the numbers
	// play drives the call from the incoming webhook to its last answer
	// (the driver then sends the status callback).
	play func(ctx context.Context, c *twiliosim.Call, said []string) error
}

var logScripts = []callScript{
	{name: "media stream, talks over the disclosure", from: "+15417770109", to: "+19717770209", said: []string{"yes I agree capybara"},
		play: func(ctx context.Context, c *twiliosim.Call, said []string) error {
			resp, err := c.TwiML(ctx, c.Twilio.PublicBaseURL+ivr.PathIncoming, c.Params(url.Values{"CallStatus": {"ringing"}}))
			if err != nil {
				return err
			}
			st, ok := resp.Find("Stream")
			if !ok {
				return fmt.Errorf("no <Stream>:\n%s", resp.Raw)
			}
			params := map[string]string{}
			for _, p := range st.Children {
				params[p.Attr("name")] = p.Attr("value")
			}
			// Both tracks of the demo's generated call, as fast as the
			// socket takes them; the stream keeps the answer's audio.
			tw := *c.Twilio
			tw.Target = c.Twilio.PublicBaseURL
			audio := democall.Generate()
			if _, err := tw.Stream(ctx, st.Attr("url"), twiliosim.StreamPlay{CallSID: c.SID, CustomParameters: params,
				Inbound: audio.Inbound, Outbound: audio.Outbound}); err != nil {
				return err
			}
			if resp, err = c.Follow(ctx, resp); err != nil {
				return err
			}
			g, ok := resp.SpeechGather()
			if !ok {
				return fmt.Errorf("no speech Gather after the must-hear part:\n%s", resp.Raw)
			}
			return answer(ctx, c, g.Attr("action"), url.Values{"SpeechResult": {said[0]}, "Confidence": {"0.94"}}, "Hangup")
		}},
	{name: "speech, agrees", from: "+15417770101", to: "+19717770201", said: []string{"yes I agree quokka"},
		play: func(ctx context.Context, c *twiliosim.Call, said []string) error {
			g, err := startCall(ctx, c)
			if err != nil {
				return err
			}
			// Partial results first, as Twilio sends them while the caller talks.
			if err := post(ctx, c, g.Attr("partialResultCallback"), url.Values{"UnstableSpeechResult": {said[0]}, "Stability": {"0.8"}}, http.StatusNoContent); err != nil {
				return err
			}
			return answer(ctx, c, g.Attr("action"), url.Values{"SpeechResult": {said[0]}, "Confidence": {"0.93"}}, "Hangup")
		}},
	{name: "keys, declines", from: "+15417770102", to: "+19717770202",
		play: func(ctx context.Context, c *twiliosim.Call, _ []string) error {
			g, err := startCall(ctx, c)
			if err != nil {
				return err
			}
			return answer(ctx, c, g.Attr("action"), url.Values{"Digits": {"2"}}, "Hangup")
		}},
	{name: "speech, declines", from: "+15417770103", to: "+19717770203", said: []string{"no I do not agree marmalade"},
		play: func(ctx context.Context, c *twiliosim.Call, said []string) error {
			g, err := startCall(ctx, c)
			if err != nil {
				return err
			}
			return answer(ctx, c, g.Attr("action"), url.Values{"SpeechResult": {said[0]}, "Confidence": {"0.91"}}, "Hangup")
		}},
	{name: "speech without confidence, confirmed by key", from: "+15417770104", to: "+19717770204", said: []string{"yes I agree kumquat"},
		play: func(ctx context.Context, c *twiliosim.Call, said []string) error {
			g, err := startCall(ctx, c)
			if err != nil {
				return err
			}
			resp, err := c.TwiML(ctx, g.Attr("action"), c.Params(url.Values{"SpeechResult": {said[0]}}))
			if err != nil {
				return err
			}
			confirm, ok := resp.Find("Gather")
			if !ok {
				return fmt.Errorf("no confirmation Gather:\n%s", resp.Raw)
			}
			return answer(ctx, c, confirm.Attr("action"), url.Values{"Digits": {"1"}}, "Hangup")
		}},
	{name: "unclear three times", from: "+15417770105", to: "+19717770205",
		said: []string{"purple wombat", "zanzibar lighthouse", "tangerine bicycle"},
		play: func(ctx context.Context, c *twiliosim.Call, said []string) error {
			g, err := startCall(ctx, c)
			if err != nil {
				return err
			}
			for i, s := range said {
				resp, err := c.TwiML(ctx, g.Attr("action"), c.Params(url.Values{"SpeechResult": {s}, "Confidence": {"0.9"}}))
				if err != nil {
					return err
				}
				if i == len(said)-1 {
					if !resp.HangsUp() {
						return fmt.Errorf("the last unclear answer does not close the call:\n%s", resp.Raw)
					}
					break
				}
				var ok bool
				if g, ok = resp.SpeechGather(); !ok {
					return fmt.Errorf("no re-prompt:\n%s", resp.Raw)
				}
			}
			return nil
		}},
	{name: "Spanish, agrees", from: "+15417770106", to: "+19717770206", said: []string{"sí estoy de acuerdo flamenco"},
		play: func(ctx context.Context, c *twiliosim.Call, said []string) error {
			resp, err := c.Start(ctx, ivr.PathIncoming)
			if err != nil {
				return err
			}
			lang, ok := resp.Find("Gather")
			if !ok || lang.Attr("input") != "dtmf" {
				return fmt.Errorf("no language Gather:\n%s", resp.Raw)
			}
			resp, err = c.TwiML(ctx, lang.Attr("action"), c.Params(url.Values{"Digits": {"9"}}))
			if err == nil {
				resp, err = c.Follow(ctx, resp)
			}
			if err != nil {
				return err
			}
			g, ok := resp.SpeechGather()
			if !ok {
				return fmt.Errorf("no Spanish Gather:\n%s", resp.Raw)
			}
			return answer(ctx, c, g.Attr("action"), url.Values{"SpeechResult": {said[0]}, "Confidence": {"0.9"}}, "Hangup")
		}},
	{name: "hangs up without answering", from: "+15417770107", to: "+19717770207",
		play: func(ctx context.Context, c *twiliosim.Call, _ []string) error {
			_, err := startCall(ctx, c)
			return err
		}},
}

func startCall(ctx context.Context, c *twiliosim.Call) (twiliosim.Verb, error) {
	resp, err := c.Start(ctx, ivr.PathIncoming)
	if err != nil {
		return twiliosim.Verb{}, err
	}
	g, ok := resp.SpeechGather()
	if !ok {
		return twiliosim.Verb{}, fmt.Errorf("no speech Gather:\n%s", resp.Raw)
	}
	return g, nil
}

// answer posts params to a Gather's action and wants a TwiML answer with
// the verb named.
func answer(ctx context.Context, c *twiliosim.Call, action string, params url.Values, want string) error {
	resp, err := c.TwiML(ctx, action, c.Params(params))
	if err != nil {
		return err
	}
	if _, ok := resp.Find(want); !ok {
		return fmt.Errorf("answer has no <%s>:\n%s", want, resp.Raw)
	}
	return nil
}

func post(ctx context.Context, c *twiliosim.Call, fullURL string, params url.Values, want int) error {
	status, body, err := c.Twilio.Post(ctx, fullURL, c.Params(params))
	if err == nil && status != want {
		err = fmt.Errorf("POST %s: %d, want %d: %s", fullURL, status, want, body)
	}
	return err
}

// hostile are requests that are not Twilio's but carry PHI where Twilio
// would, and a made-up request id: refused, and none of it logged.
func hostile(ctx context.Context, tw *twiliosim.Twilio, base string) error {
	c := &twiliosim.Call{Twilio: tw, SID: callSID("bad", 1), From: "+15417770199", To: "+19717770299"}
	params := c.Params(url.Values{"SpeechResult": {"yes I agree pomegranate"}, "Confidence": {"0.9"}})
	cases := []struct {
		name   string
		req    func() (*http.Request, error)
		status int
	}{
		{"unsigned", func() (*http.Request, error) {
			return http.NewRequestWithContext(ctx, http.MethodPost, base+ivr.PathGather+"?lang=en-US", strings.NewReader(params.Encode()))
		}, http.StatusForbidden},
		{"a forged request id", func() (*http.Request, error) {
			r, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/healthz", nil)
			if err == nil {
				r.Header.Set("X-Request-Id", "+15417770199")
			}
			return r, err
		}, http.StatusOK},
		{"a number in the path", func() (*http.Request, error) {
			return http.NewRequestWithContext(ctx, http.MethodGet, base+"/voice/%2B15417770199", nil)
		}, http.StatusNotFound},
	}
	for _, tc := range cases {
		req, err := tc.req()
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			return fmt.Errorf("%s: %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
	}
	// Signed, but out of shape: a From that is not a number, a confidence
	// that is not a score — each value PHI-like.
	for _, bad := range []url.Values{
		{"From": {"15417770199 yes I agree pomegranate"}},
		{"SpeechResult": {"yes I agree pomegranate"}, "Confidence": {"0.9 +15417770199"}},
	} {
		status, _, err := tw.Post(ctx, base+ivr.PathGather, c.Params(bad))
		if err != nil {
			return err
		}
		if status != http.StatusBadRequest && status != http.StatusOK {
			return fmt.Errorf("malformed parameter: %d", status)
		}
	}
	return nil
}

// phiVariants are the ways a number may show up: as dialled, without the
// +, without the country code, and written out.
func phiVariants(number string) []string {
	d := strings.TrimPrefix(number, "+")
	national := d[1:]
	return []string{number, d, national, "(" + national[:3] + ") " + national[3:6] + "-" + national[6:],
		national[:3] + "-" + national[3:6] + "-" + national[6:], url.QueryEscape(number)}
}

// TestLogsCarryNoPHI runs `consentline serve` as Twilio and Zapier see it —
// whole calls of every kind, their status callbacks, the relay to a
// catch hook, a scrape of /metrics, a SIGTERM — and fails if any byte the
// process wrote (its JSON log on stdout, anything on stderr: River's log,
// the HTTP server's error log, a panic) holds a caller's number or words.
// It also checks there is an access line per webhook naming the route and
// the call, so a silent server cannot pass.
func TestLogsCarryNoPHI(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		runLogsCarryNoPHI(t, "", "")
	})
	t.Run("postgres+redis", func(t *testing.T) {
		t.Parallel()
		redisURL, _ := testdb.Redis(t)
		runLogsCarryNoPHI(t, testdb.Postgres(t), redisURL)
	})
}

func runLogsCarryNoPHI(t *testing.T, dbURL, redisURL string) {
	s := newSecrets(t)
	hook := newCatchHook(t)
	env := serveEnv(t, s, dbURL, hook.hookURL())
	env["REDIS_URL"] = redisURL
	const metricsToken = "0123456789abcdef0123456789abcdef"
	env["METRICS_TOKEN"] = metricsToken
	logs := &lockedBuffer{}
	p := startServe(t, env, logs)
	base := env["PUBLIC_BASE_URL"]

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tw := &twiliosim.Twilio{PublicBaseURL: base, AuthToken: s.authToken, AccountSID: s.accountSID, HTTP: &http.Client{Timeout: 5 * time.Second}}
	var phi []string
	for i, sc := range logScripts {
		c := &twiliosim.Call{Twilio: tw, SID: callSID("10a6", i), From: sc.from, To: sc.to}
		if err := sc.play(ctx, c, sc.said); err != nil {
			t.Fatalf("call %q: %v", sc.name, err)
		}
		if err := post(ctx, c, base+ivr.PathStatus, url.Values{"CallStatus": {"completed"}, "CallDuration": {"37"}}, http.StatusNoContent); err != nil {
			t.Fatalf("call %q: status callback: %v", sc.name, err)
		}
		phi = append(phi, phiVariants(sc.from)...)
		phi = append(phi, phiVariants(sc.to)...)
		phi = append(phi, sc.said...)
	}
	if err := hostile(ctx, tw, base); err != nil {
		t.Fatal(err)
	}
	phi = append(phi, phiVariants("+15417770199")...)
	phi = append(phi, phiVariants("+19717770299")...)
	phi = append(phi, "pomegranate")

	// Every call's decision and call.completed reach the catch hook.
	waitFor(t, 30*time.Second, "every event delivered", func() bool { return len(hook.delivered()) == 2*len(logScripts) })

	metrics := scrape(t, base, "")
	if metrics.status != http.StatusUnauthorized {
		t.Errorf("/metrics without the token: %d, want 401", metrics.status)
	}
	metrics = scrape(t, base, metricsToken)
	if metrics.status != http.StatusOK {
		t.Fatalf("/metrics with the token: %d", metrics.status)
	}
	for _, want := range []string{
		fmt.Sprintf(`consentline_http_request_duration_seconds_count{route="/voice/incoming",status="200"} %d`, len(logScripts)),
		`consentline_decisions_total{outcome="no_response",source="status_callback",timing="estimated"} 1`,
		fmt.Sprintf(`consentline_relay_attempts_total{outcome="delivered"} %d`, 2*len(logScripts)),
		// The call that confirms by key, and the hostile request whose
		// malformed Confidence counts as none.
		`consentline_ivr_answers_total{kind="confirm"} 2`,
	} {
		if !strings.Contains(metrics.body, want) {
			t.Errorf("/metrics lacks %s\n%s", want, metrics.body)
		}
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not exit within 30 s of SIGTERM")
	}

	out := logs.String()
	for _, where := range []struct{ name, text string }{{"the server's output", out}, {"/metrics", metrics.body}} {
		if v := findPHI(where.text); v != "" {
			t.Errorf("%s contains %q", where.name, v)
		}
	}
	checkAccessLines(t, out)
	if t.Failed() {
		t.Logf("server output:\n%s", out)
	}
}

// checkAccessLines wants the output to be JSON lines, with an access line
// for every webhook route and one naming each call.
func checkAccessLines(t *testing.T, out string) {
	t.Helper()
	routes := map[string]bool{}
	sids := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg       string `json:"msg"`
			Route     string `json:"route"`
			CallSID   string `json:"call_sid"`
			RequestID string `json:"request_id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Errorf("not a JSON log line: %q", sc.Text())
			continue
		}
		if line.Msg == "request" {
			routes[line.Route] = true
			if line.CallSID != "" {
				sids[line.CallSID] = true
			}
			if line.RequestID == "" {
				t.Errorf("access line without a request id: %s", sc.Text())
			}
		}
	}
	for _, r := range []string{ivr.PathIncoming, ivr.PathLanguage, ivr.PathGather, ivr.PathPartial, ivr.PathStatus, "/metrics", "unmatched"} {
		if !routes[r] {
			t.Errorf("no access line for %s", r)
		}
	}
	for i := range logScripts {
		if !sids[callSID("10a6", i)] {
			t.Errorf("no access line names call %d's SID", i)
		}
	}
}

type scraped struct {
	status int
	body   string
}

func scrape(t *testing.T, base, token string) scraped {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return scraped{resp.StatusCode, string(body)}
}
