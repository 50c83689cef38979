package ivr

import (
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// The hand-written shape checks accept exactly what the expressions they
// were written from accept.
func TestShapesAgreeWithTheirExpressions(t *testing.T) {
	for _, tc := range []struct {
		expr  string
		check func(string) bool
		// seeds are strings near the shape, mutated below.
		seeds []string
	}{
		{`^CA[0-9a-f]{32}$`, isCallSID, []string{"CA" + strings.Repeat("0a", 16), "CA" + strings.Repeat("F", 32)}},
		{`^AC[0-9a-fA-F]{32}$`, isAccountSID, []string{"AC" + strings.Repeat("aF", 16), "ac" + strings.Repeat("0", 32)}},
		{`^MZ[0-9a-f]{32}$`, isStreamSID, []string{"MZ" + strings.Repeat("9f", 16)}},
		{`^\+[1-9][0-9]{1,14}$`, isE164, []string{"+14155550123", "+1", "+10", "+012", "+" + strings.Repeat("9", 15), "+" + strings.Repeat("9", 16)}},
		{`^[0-9*#]{0,32}$`, isDigits, []string{"", "1", "*#0", strings.Repeat("9", 32), strings.Repeat("9", 33)}},
		{`^[0-9]{1,9}$`, isDuration, []string{"", "0", "123456789", "1234567890"}},
		{`^[A-Za-z0-9_.-]{1,64}$`, isStreamName, []string{"", "consentline", "a.b-c_D9", strings.Repeat("x", 64), strings.Repeat("x", 65)}},
	} {
		re := regexp.MustCompile(tc.expr)
		rng := rand.New(rand.NewPCG(1, uint64(len(tc.expr))))
		const alphabet = "0123456789abcdefABCDEFxyzXYZ+*#_.-\n \x00\xff%CAMZ"
		try := func(v string) {
			if got, want := tc.check(v), re.MatchString(v); got != want {
				t.Errorf("%s: %q: check says %v, expression %v", tc.expr, v, got, want)
			}
		}
		for _, seed := range tc.seeds {
			try(seed)
			for range 2000 {
				b := []byte(seed)
				for range 1 + rng.IntN(3) {
					switch op := rng.IntN(3); {
					case op == 0 && len(b) > 0: // replace
						b[rng.IntN(len(b))] = alphabet[rng.IntN(len(alphabet))]
					case op == 1 && len(b) > 0: // delete
						i := rng.IntN(len(b))
						b = append(b[:i], b[i+1:]...)
					default: // insert
						i := rng.IntN(len(b) + 1)
						b = append(b[:i], append([]byte{alphabet[rng.IntN(len(alphabet))]}, b[i:]...)...)
					}
				}
				try(string(b))
			}
		}
	}
}

// parseWebhookForm reads a form body as the standard library does: the
// same values, and an error exactly when url.ParseQuery has one.
func TestParseWebhookFormAgreesWithParseQuery(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	pieces := []string{"CallSid", "From", "To", "Digits", "a", "", "=", "=", "&", "&", "&&", "%2B1415", "%2b", "%", "%zz", "%4", "+", "x+y", ";", "%3B", "%26", "%3D", "é", "%C3%A9", "%FF"}
	bodies := []string{
		"", "&", "a", "a=", "=b", "a=1&a=2", "a=1&&b=2", "a=1;b=2", "a=%", "a=%2", "a=%2B1",
		"From=%2B14155550123&To=%2B18005550199&CallSid=CA" + strings.Repeat("0", 32),
	}
	bodies = append(bodies, joinedPieces(rng, pieces, 5000, 12)...)
	for _, body := range bodies {
		want, wantErr := url.ParseQuery(body)
		r := httptest.NewRequest(http.MethodPost, "/voice/gather?attempt=1", strings.NewReader(body))
		r.Header.Set("Content-Type", formContentType)
		err := parseWebhookForm(r)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("%q: error %v, url.ParseQuery's %v", body, err, wantErr)
		}
		if len(want) == 0 && len(r.PostForm) == 0 {
			continue
		}
		if !reflect.DeepEqual(map[string][]string(r.PostForm), map[string][]string(want)) {
			t.Fatalf("%q: form %q, url.ParseQuery's %q", body, r.PostForm, want)
		}
	}
}

// What reads r.Form afterwards still finds the query and the body in it,
// and a body of another type is left to net/http.
func TestParseWebhookFormLeavesFormToNetHTTP(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/voice/gather?attempt=1", strings.NewReader("Digits=1"))
	r.Header.Set("Content-Type", formContentType)
	if err := parseWebhookForm(r); err != nil {
		t.Fatal(err)
	}
	if got := r.FormValue("attempt") + r.FormValue("Digits"); got != "11" {
		t.Errorf("r.FormValue read %q, want the query's attempt and the body's Digits", got)
	}
	r = httptest.NewRequest(http.MethodPost, "/voice/gather", strings.NewReader("Digits=1"))
	r.Header.Set("Content-Type", "text/plain")
	if err := parseWebhookForm(r); err != nil || len(r.PostForm) != 0 {
		t.Errorf("a text/plain body was read as a form: %v %v", r.PostForm, err)
	}
}

// joinedPieces returns n strings, each up to most of pieces joined at
// random: queries and bodies near the edges of what url.ParseQuery reads.
func joinedPieces(rng *rand.Rand, pieces []string, n, most int) []string {
	out := make([]string, n)
	for i := range out {
		var b strings.Builder
		for range rng.IntN(most) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		out[i] = b.String()
	}
	return out
}
