package ivr_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"

	"github.com/twilio/twilio-go/client"

	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
)

// The caller's and called numbers and words every test call carries: none
// may reach a log line or a refusal's body.
const (
	callerNumber = "+14155550123"
	calledNumber = "+18005550199"
)

var phi = []string{"4155550123", "8005550199", "I agree", "\xff"}

// gatherURL is a Gather action as the server's TwiML names it.
const gatherURL = publicBase + ivr.PathGather + "?attempt=0&lang=en-US&t0=1800000000000"

// post sends body to fullURL (a public URL) with the given signature and
// returns the status and the answer's body.
func (h *harness) post(fullURL, body, signature string) (int, string) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.srv.URL+strings.TrimPrefix(fullURL, publicBase), strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Twilio-Signature", signature)
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// allRecords counts every stored record: a refused request must record
// nothing under any SID, including the re-cut one.
func (h *harness) allRecords() int {
	h.t.Helper()
	var n int
	if err := h.store.DB().QueryRow(`SELECT count(*) FROM consent_records`).Scan(&n); err != nil {
		h.t.Fatalf("count records: %v", err)
	}
	return n
}

// mark is where a harness's records and logs stood before a request.
type mark struct{ records, logs int }

func (h *harness) mark() mark { return mark{h.allRecords(), len(h.logs.String())} }

// checkRefused checks a 400 that recorded nothing since m, named param in
// one log line and in the body, and let no value through to either.
func (h *harness) checkRefused(t *testing.T, m mark, status int, body, param string, value string) {
	t.Helper()
	if status != http.StatusBadRequest {
		t.Errorf("status %d, want 400 (body %q)", status, body)
	}
	if want := "malformed Twilio parameter: " + param + "\n"; body != want {
		t.Errorf("body %q, want %q", body, want)
	}
	if n := h.allRecords() - m.records; n != 0 {
		t.Errorf("a refused webhook recorded %d", n)
	}
	logs := h.logs.String()[m.logs:]
	if n := strings.Count(logs, "param="+param+"\n"); n != 1 {
		t.Errorf("%d log lines name %s, want 1:\n%s", n, param, logs)
	}
	leaks := append([]string{}, phi...)
	if len(value) >= 4 { // shorter ones ("1", "") occur in any log line
		leaks = append(leaks, value)
	}
	for _, leak := range leaks {
		if strings.Contains(logs, leak) || strings.Contains(body, leak) {
			t.Errorf("log or body holds %q:\nlog: %s\nbody: %q", leak, logs, body)
		}
	}
}

// Each parameter ConsentLine reads is checked against Twilio's shape: in
// shape it passes, out of shape the webhook gets 400 and has no effect.
func TestParamShapes(t *testing.T) {
	long := func(prefix string, n int) string { return prefix + strings.Repeat("a", n-len(prefix)) }
	addresses := cases{
		good: []string{"", callerNumber, "+442071838750", "+12", "+123456789012345",
			"client:alice", "client:support_agent-1", "client:" + strings.Repeat("a", 256),
			"sip:alice@example.com", "sip:+14155550123@pbx.example.com:5060;transport=tls",
			"anonymous", "Anonymous", "ANONYMOUS", "restricted", "Restricted", "unknown", "UNAVAILABLE",
			"+266696687", "+7378742833", "+86282452253", "+8656696"},
		bad: []string{"14155550123", "+04155550123", "+1234567890123456", "+1 415 555 0123", "+1415555012a",
			callerNumber + "To" + calledNumber, "client:", "client: alice", "client:a<b", "client:" + strings.Repeat("a", 257),
			"sip:", "sip:a b@example.com", "sip:" + strings.Repeat("a", 257), "sip:alice\x00", "tel:" + callerNumber,
			"alice", "anonymous1", "\xff", "+1415555\xff"},
	}
	speech := cases{
		good: []string{"", "yes I agree", "sí, estoy de acuerdo", "是的", long("yes ", 4096)},
		bad:  []string{long("yes ", 4097), "yes \xff", "s\xc3", "\xed\xa0\x80"},
	}
	all := []cases{
		{param: "CallSid", good: []string{callSID("good")},
			bad: []string{"", "CA", "CA0123456789abcdef0123456789abcde", "CA0123456789abcdef0123456789abcdef0",
				"CA0123456789ABCDEF0123456789ABCDEF", "ca0123456789abcdef0123456789abcdef", "AC0123456789abcdef0123456789abcdef",
				"CA0123456789abcdef0123456789abcde\xff", "CA0123456789abcdef0123456789abcdef\n", " CA0123456789abcdef0123456789abcdef",
				"CA0123456789abcdef0123456789abcdefCallStatusin-progress", long("CA", 8<<10)}},
		{param: "AccountSid", good: []string{accountSID, strings.ToUpper(accountSID[:2]) + strings.ToUpper(accountSID[2:])},
			bad: []string{"", "AC00000000000000000000000000000000", accountSID + "ApiVersion2010-04-01", accountSID[:33],
				"ac" + accountSID[2:], accountSID + "\xff"}},
		withParam("From", addresses), withParam("To", addresses), withParam("Caller", addresses), withParam("Called", addresses),
		{param: "Digits", good: []string{"", "1", "2", "9", "*", "#", "12#", "*9", strings.Repeat("1", 32)},
			bad: []string{"1Directioninbound", "a", "1 ", " 1", "-1", "1.0", "+1", strings.Repeat("1", 33), "\xff", "hangup"}},
		withParam("SpeechResult", speech), withParam("StableSpeechResult", speech), withParam("UnstableSpeechResult", speech),
		{param: "CallStatus", path: publicBase + ivr.PathStatus,
			good: []string{"queued", "initiated", "ringing", "in-progress", "completed", "busy", "failed", "no-answer", "canceled"},
			bad:  []string{"", "Completed", "done", "cancelled", "completedCalled" + calledNumber, "in-progress\xff"}},
		{param: "CallDuration", path: publicBase + ivr.PathStatus, good: []string{"0", "37", "86400", "000"},
			bad: []string{"", "-1", "1.5", "1e3", "+37", "37To" + calledNumber, "1234567890", "0x10"}},
	}
	for _, tc := range all {
		t.Run(tc.param, func(t *testing.T) {
			path := tc.path
			if path == "" {
				path = gatherURL
			}
			h := newHarness(t, t.TempDir())
			for i, v := range tc.good {
				c := h.call(fmt.Sprint("good ", tc.param, i))
				params := c.Params(url.Values{"Digits": {"1"}})
				if path != gatherURL {
					params = c.Params(url.Values{"CallStatus": {"completed"}, "CallDuration": {"12"}})
				}
				params.Set(tc.param, v)
				status, body := h.post(path, params.Encode(), twiliosim.Sign(authToken, path, params))
				if status == http.StatusBadRequest || status == http.StatusForbidden {
					t.Errorf("%s=%q: status %d %q, want it taken", tc.param, v, status, body)
				}
			}
			for i, v := range tc.bad {
				c := h.call(fmt.Sprint("bad ", tc.param, i))
				params := c.Params(url.Values{"Digits": {"1"}})
				if path != gatherURL {
					params = c.Params(url.Values{"CallStatus": {"completed"}, "CallDuration": {"12"}})
				}
				params.Set(tc.param, v)
				m := h.mark()
				status, body := h.post(path, params.Encode(), twiliosim.Sign(authToken, path, params))
				h.checkRefused(t, m, status, body, tc.param, v)
			}
		})
	}
}

// cases are values of one parameter Twilio may send, and values it never
// does.
type cases struct {
	param     string
	path      string // gatherURL unless set
	good, bad []string
}

func withParam(name string, c cases) cases {
	c.param = name
	return c
}

// CallSid and AccountSid are required: a webhook without them names no
// call of this account.
func TestRequiredParams(t *testing.T) {
	for _, param := range []string{"CallSid", "AccountSid"} {
		h := newHarness(t, t.TempDir())
		params := h.call("required").Params(url.Values{"Digits": {"1"}})
		params.Del(param)
		status, body := h.post(gatherURL, params.Encode(), twiliosim.Sign(authToken, gatherURL, params))
		h.checkRefused(t, mark{}, status, body, param, "")
	}
}

// Twilio never repeats a parameter, and the signature check reads only a
// parameter's first value, so a second one appended to a captured request
// is unsigned: refused.
func TestRepeatedParam(t *testing.T) {
	for _, tc := range []struct{ param, extra string }{
		{"Digits", "2"}, {"CallSid", callSID("other")}, {"From", "+14155559999"},
	} {
		h := newHarness(t, t.TempDir())
		params := h.call("repeated").Params(url.Values{"Digits": {"1"}})
		body := params.Encode() + "&" + tc.param + "=" + url.QueryEscape(tc.extra)
		status, resp := h.post(gatherURL, body, twiliosim.Sign(authToken, gatherURL, params))
		h.checkRefused(t, mark{}, status, resp, tc.param, tc.extra)
	}
}

// A Confidence or Stability that is not a finite number in [0, 1] counts
// as absent, not as an error: speech without a confidence asks the caller
// to confirm with a key (before, a NaN reached the store, which refused the
// record, and the caller heard the hold line again and again), and a
// partial without a stability never decides.
func TestMalformedScoresAreAbsent(t *testing.T) {
	for _, v := range []string{"NaN", "nan", "Inf", "-Inf", "+Inf", "1.5", "-0.2", "abc", "0.93Directioninbound", "1e400"} {
		h := newHarness(t, t.TempDir())
		c := h.call("score " + v)
		g := h.start(c)
		resp := h.answer(c, g, url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {v}})
		confirm, ok := resp.Find("Gather")
		if !ok || confirm.Attr("input") != "dtmf" {
			t.Errorf("Confidence=%q: want a request to confirm with a key:\n%s", v, resp.Raw)
		}
		if _, held := resp.Find("Redirect"); held {
			t.Errorf("Confidence=%q: the caller was put on hold:\n%s", v, resp.Raw)
		}
		if n := h.records(c.SID); n != 0 {
			t.Errorf("Confidence=%q: recorded %d before the key", v, n)
		}
		// The key then decides, as for any speech without a confidence.
		h.answer(c, confirm, url.Values{"Digits": {"1"}})
		if n := h.records(c.SID); n != 1 {
			t.Errorf("Confidence=%q: %d records after the key, want 1", v, n)
		}

		status, _, err := h.twilio.Post(context.Background(), g.Attr("partialResultCallback"),
			c.Params(url.Values{"UnstableSpeechResult": {"no I do not agree"}, "Stability": {v}}))
		if err != nil || status != http.StatusNoContent {
			t.Errorf("Stability=%q: partial answered %d %v, want 204", v, status, err)
		}
		if strings.Contains(h.logs.String(), v) && len(v) > 3 {
			t.Errorf("a malformed score's value %q was logged", v)
		}
	}
}

// pair is one key and its value as Twilio's signature sees them.
type pair struct{ k, v string }

// sortedPairs lists params in signing order.
func sortedPairs(params url.Values) []pair {
	var ps []pair
	for k, vs := range params {
		ps = append(ps, pair{k, vs[0]})
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].k < ps[j].k })
	return ps
}

// swallow re-cuts params: key's value takes in the next n keys and values
// in signing order, which then no longer exist. The signature cannot tell.
func swallow(params url.Values, key string, n int) url.Values {
	ps := sortedPairs(params)
	out := url.Values{}
	for i := 0; i < len(ps); i++ {
		if ps[i].k != key {
			out.Set(ps[i].k, ps[i].v)
			continue
		}
		v := ps[i].v
		for j := 1; j <= n; j++ {
			v += ps[i+j].k + ps[i+j].v
		}
		out.Set(key, v)
		i += n
	}
	return out
}

// keyInto re-cuts params the other way: key's value takes in the next
// key, and that key's value becomes a key of its own (with an empty value).
func keyInto(params url.Values, key string) url.Values {
	ps := sortedPairs(params)
	out := url.Values{}
	for i := 0; i < len(ps); i++ {
		if ps[i].k == key {
			out.Set(key, ps[i].v+ps[i+1].k)
			out.Set(ps[i+1].v, "")
			i++
			continue
		}
		out.Set(ps[i].k, ps[i].v)
	}
	return out
}

func concat(params url.Values) string {
	var b strings.Builder
	for _, p := range sortedPairs(params) {
		b.WriteString(p.k + p.v)
	}
	return b.String()
}

// Twilio's signature joins each sorted key to its value with nothing
// between, so moving a boundary keeps a captured request's signature valid.
// Each re-cut below verifies (checked with twilio-go's own validator) and
// is refused by shape: 400, nothing recorded, no value in the log.
func TestRecutRequestsAreRefused(t *testing.T) {
	partialURL := publicBase + ivr.PathPartial + "?attempt=0&lang=en-US&t0=1800000000000"
	statusURL := publicBase + ivr.PathStatus
	sid := callSID("recut")
	call := func(h *harness) *twiliosim.Call {
		return &twiliosim.Call{Twilio: h.twilio, SID: sid, From: callerNumber, To: calledNumber}
	}
	speech := url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.93"}}
	for _, tc := range []struct {
		name     string
		url      string
		extra    url.Values
		recut    func(url.Values) url.Values
		param    string
		contains string // what the re-cut value carries
	}{
		{"CallSid swallows CallStatus, Called and Caller: the patient's number in the SID", gatherURL, speech,
			func(p url.Values) url.Values { return swallow(p, "CallSid", 3) }, "CallSid", callerNumber},
		{"CallSid swallows a CallerName holding byte 0xff", gatherURL,
			url.Values{"Digits": {"1"}, "CallerName": {"ZO\xff"}},
			func(p url.Values) url.Values { return swallow(p, "CallSid", 4) }, "CallSid", "\xff"},
		{"an 8 KB CallSid swallowing a partial result", partialURL,
			url.Values{"StableSpeechResult": {strings.Repeat("yes I agree ", 340)}, "UnstableSpeechResult": {strings.Repeat("I agree yes ", 340)}, "Stability": {"0.9"}},
			func(p url.Values) url.Values { return swallow(p, "CallSid", 9) }, "CallSid", "UnstableSpeechResult"},
		{"ApiVersion swallows the CallSid key; the SID becomes a key", gatherURL, speech,
			func(p url.Values) url.Values { return keyInto(p, "ApiVersion") }, "CallSid", "CallSid"},
		{"AccountSid swallows ApiVersion", gatherURL, speech,
			func(p url.Values) url.Values { return swallow(p, "AccountSid", 1) }, "AccountSid", "ApiVersion"},
		{"Digits swallows Direction", gatherURL, url.Values{"Digits": {"2"}},
			func(p url.Values) url.Values { return swallow(p, "Digits", 1) }, "Digits", "Direction"},
		{"Called swallows Caller", gatherURL, speech,
			func(p url.Values) url.Values { return swallow(p, "Called", 1) }, "Called", callerNumber},
		{"From swallows the transcript", gatherURL, speech,
			func(p url.Values) url.Values { return swallow(p, "From", 1) }, "From", "I agree"},
		{"CallStatus swallows Called and Caller", statusURL, url.Values{"CallStatus": {"completed"}, "CallDuration": {"37"}},
			func(p url.Values) url.Values { return swallow(p, "CallStatus", 2) }, "CallStatus", callerNumber},
		{"CallDuration swallows CallSid", statusURL, url.Values{"CallStatus": {"completed"}, "CallDuration": {"37"}},
			func(p url.Values) url.Values { return swallow(p, "CallDuration", 1) }, "CallSid", sid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, t.TempDir())
			orig := call(h).Params(tc.extra)
			sig := twiliosim.Sign(authToken, tc.url, orig)
			recut := tc.recut(orig)

			// The re-cut is what an attacker holding only the captured
			// request can send: the same signed string, so the same
			// signature, which the server's validator accepts.
			if concat(recut) != concat(orig) || twiliosim.Sign(authToken, tc.url, recut) != sig {
				t.Fatal("the re-cut does not keep the signed string")
			}
			flat := map[string]string{}
			for k := range recut {
				flat[k] = recut.Get(k)
			}
			validator := client.NewRequestValidator(authToken)
			if !validator.Validate(tc.url, flat, sig) {
				t.Fatal("twilio-go's validator rejects the re-cut")
			}
			if !strings.Contains(strings.Join(flatValues(recut), ""), tc.contains) {
				t.Fatalf("the re-cut does not carry %q", tc.contains)
			}

			status, body := h.post(tc.url, recut.Encode(), sig)
			h.checkRefused(t, mark{}, status, body, tc.param, recut.Get(tc.param))

			// The request as Twilio sent it is taken.
			if status, body := h.post(tc.url, orig.Encode(), sig); status >= 300 {
				t.Errorf("the original request: %d %q", status, body)
			}
		})
	}
}

func flatValues(p url.Values) []string {
	var out []string
	for k, vs := range p {
		out = append(out, k)
		out = append(out, vs...)
	}
	return out
}

// A re-cut ConsentLine cannot tell by shape — the Confidence swallowing the
// next parameter — leaves a confidence that is no number: it counts as
// absent, so the answer cannot decide on its own and the caller is asked
// to confirm with a key.
func TestRecutConfidenceDoesNotDecide(t *testing.T) {
	h := newHarness(t, t.TempDir())
	c := h.call("recut confidence")
	orig := c.Params(url.Values{"SpeechResult": {"yes I agree"}, "Confidence": {"0.93"}})
	sig := twiliosim.Sign(authToken, gatherURL, orig)
	recut := swallow(orig, "Confidence", 1) // "0.93Direction" + "inbound"
	if twiliosim.Sign(authToken, gatherURL, recut) != sig {
		t.Fatal("the re-cut does not keep the signature")
	}
	status, body := h.post(gatherURL, recut.Encode(), sig)
	if status != http.StatusOK || !strings.Contains(body, `input="dtmf"`) {
		t.Errorf("re-cut Confidence: %d, want a request for a key:\n%s", status, body)
	}
	if n := h.allRecords(); n != 0 {
		t.Errorf("re-cut Confidence recorded %d", n)
	}
}
