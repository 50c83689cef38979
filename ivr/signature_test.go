package ivr_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/twilio/twilio-go/client"

	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/ivr/twiliosim"
)

// The vector Twilio's helper libraries test against (CONTRACT.md §1).
func TestSignatureVector(t *testing.T) {
	const vectorURL = "https://mycompany.com/myapp.php?foo=1&bar=2"
	params := url.Values{
		"CallSid": {"CA1234567890ABCDE"}, "Caller": {"+14158675309"}, "Digits": {"1234"},
		"From": {"+14158675309"}, "To": {"+18005551212"},
	}
	if got := twiliosim.Sign("12345", vectorURL, params); got != "RSOYDt4T1cUTdK1PDd93/VVr8B8=" {
		t.Errorf("signature = %s", got)
	}
	params.Set("ReasonConferenceEnded", "test")
	params.Set("Reason", "Participant")
	want := "vOEb5UThFn24KEfnOFLQY2AE5FY="
	if got := twiliosim.Sign("12345", vectorURL, params); got != want {
		t.Errorf("signature = %s, want %s", got, want)
	}
	// The validator the server uses agrees.
	v := client.NewRequestValidator("12345")
	flat := map[string]string{}
	for k := range params {
		flat[k] = params.Get(k)
	}
	if !v.Validate(vectorURL, flat, want) {
		t.Error("twilio-go's validator rejects the vector")
	}
}

func TestSignatureEnforced(t *testing.T) {
	h := newHarness(t, t.TempDir())
	c := h.call("CAsigned")
	params := c.Params(url.Values{"Digits": {"1"}})
	action := publicBase + ivr.PathGather + "?attempt=0&lang=en-US&t0=1800000000000"

	post := func(body, signature string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, h.srv.URL+strings.TrimPrefix(action, publicBase), strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if signature != "" {
			req.Header.Set("X-Twilio-Signature", signature)
		}
		resp, err := h.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	good := twiliosim.Sign(authToken, action, params)

	tampered := url.Values{}
	for k, v := range params {
		tampered[k] = v
	}
	tampered.Set("Digits", "2")
	cases := []struct {
		name      string
		body, sig string
	}{
		{"missing", params.Encode(), ""},
		{"forged with another token", params.Encode(), twiliosim.Sign("not-the-token", action, params)},
		{"signed for the local URL, not the public one", params.Encode(), twiliosim.Sign(authToken, h.srv.URL+ivr.PathGather+"?attempt=0&lang=en-US&t0=1800000000000", params)},
		{"valid signature, tampered body", tampered.Encode(), good},
		{"garbage", params.Encode(), "!!!"},
	}
	for _, tc := range cases {
		if status := post(tc.body, tc.sig); status != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", tc.name, status)
		}
	}
	if n := h.records(c.SID); n != 0 {
		t.Fatalf("rejected webhooks recorded %d", n)
	}
	// Signed for the public URL while arriving on 127.0.0.1:<port>: accepted.
	if status := post(params.Encode(), good); status != http.StatusOK {
		t.Fatalf("valid signature: status %d", status)
	}
	if n := h.records(c.SID); n != 1 {
		t.Fatalf("valid webhook recorded %d", n)
	}
}

func TestWebhookLimits(t *testing.T) {
	h := newHarness(t, t.TempDir())
	// GET on a voice route: not allowed.
	resp, err := h.srv.Client().Get(h.srv.URL + ivr.PathIncoming)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET %s = %d, want 405", ivr.PathIncoming, resp.StatusCode)
	}
	// An oversized body is refused before it is read.
	big := url.Values{"CallSid": {"CAbig"}, "SpeechResult": {strings.Repeat("a", 100<<10)}}
	status, _, err := h.twilio.Post(context.Background(), publicBase+ivr.PathGather, big)
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body = %d, want 413", status)
	}
	// Signed but naming no call.
	status, _, err = h.twilio.Post(context.Background(), publicBase+ivr.PathGather, url.Values{"Digits": {"1"}})
	if err != nil || status != http.StatusBadRequest {
		t.Errorf("no CallSid = %d %v, want 400", status, err)
	}
}
