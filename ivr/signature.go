package ivr

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"hash"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/twilio/twilio-go/client"
)

// maxWebhookBody bounds a Twilio webhook body. Real ones are a few KB; a
// larger body is not Twilio and is refused before it is read.
const maxWebhookBody = 64 << 10

// RequireTwilioSignature admits only requests signed by Twilio with the
// account's auth token. The signature covers the public URL Twilio called
// (publicBaseURL + path + query), not the Host and port the request shows
// here: behind Railway's TLS-terminating proxy those differ.
//
// A missing or wrong signature gets 403 before any handler runs, so a forged
// webhook records, relays and logs nothing of its payload.
func RequireTwilioSignature(publicBaseURL, authToken string, log *slog.Logger) func(http.Handler) http.Handler {
	validator := client.NewRequestValidator(authToken)
	key := []byte(authToken)
	base := strings.TrimRight(publicBaseURL, "/")
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, maxWebhookBody)
			if err := parseWebhookForm(r); err != nil {
				refuseBody(w, err)
				return
			}
			signature := r.Header.Get("X-Twilio-Signature")
			url := base + r.URL.RequestURI()
			if signature == "" || !(signedAsIs(key, url, r.PostForm, signature) || validator.Validate(url, formParams(r), signature)) {
				// Only the path: the query and body may carry PHI.
				log.Warn("rejected webhook without a valid Twilio signature", "path", r.URL.Path, "signature_present", signature != "")
				http.Error(w, "invalid Twilio signature", http.StatusForbidden)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// signedAsIs reports whether signature is Twilio's signature of the form
// posted to url exactly as written: base64 of HMAC-SHA1, keyed by the auth
// token, over the URL (signedURL) followed by each parameter's name and value in
// name order.
//
// It is the first of the two URLs twilio-go's RequestValidator.Validate
// tries (it also tries the URL with its default port added or removed,
// since Twilio has signed either), computed once instead of twice and
// without the URL parsing and formatting around it: a quarter of the cost,
// and the check runs on every webhook, including each one a burst past
// capacity answers with a hold. Only a request this refuses goes on to the
// library, so what is accepted is exactly what the library accepts
// (TestSignedAsIsAgreesWithTwilioGo).
func signedAsIs(key []byte, signedURL string, form url.Values, signature string) bool {
	var want [sha1.Size + 3]byte
	if base64.StdEncoding.DecodedLen(len(signature)) > len(want) {
		return false
	}
	if n, err := base64.StdEncoding.Decode(want[:], []byte(signature)); err != nil || n != sha1.Size {
		return false
	}
	m := macs.Get().(*signing)
	defer macs.Put(m)
	if m.mac == nil || !bytes.Equal(m.key, key) {
		m.key, m.mac = key, hmac.New(sha1.New, key)
	}
	m.names = m.names[:0]
	for name, values := range form {
		if len(values) > 0 {
			m.names = append(m.names, name)
		}
	}
	slices.Sort(m.names)
	m.msg = append(m.msg[:0], signedURL...)
	for _, name := range m.names {
		m.msg = append(m.msg, name...)
		m.msg = append(m.msg, form[name][0]...)
	}
	m.mac.Reset()
	m.mac.Write(m.msg)
	var got [sha1.Size]byte
	return hmac.Equal(m.mac.Sum(got[:0]), want[:sha1.Size])
}

// signing is signedAsIs's reusable state: the HMAC keyed once (the key's
// padding is computed by hmac.New, not by Reset) and the buffers.
type signing struct {
	key   []byte
	mac   hash.Hash
	names []string
	msg   []byte
}

var macs = sync.Pool{New: func() any { return new(signing) }}

// formParams flattens the POSTed form the way Twilio signs it: each
// parameter once (Twilio never repeats one).
func formParams(r *http.Request) map[string]string {
	params := make(map[string]string, len(r.PostForm))
	for k, v := range r.PostForm {
		if len(v) > 0 {
			params[k] = v[0]
		}
	}
	return params
}
