package ivr

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"

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
	base := strings.TrimRight(publicBaseURL, "/")
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, maxWebhookBody)
			if err := r.ParseForm(); err != nil {
				var tooBig *http.MaxBytesError
				if errors.As(err, &tooBig) {
					http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
					return
				}
				http.Error(w, "malformed form body", http.StatusBadRequest)
				return
			}
			signature := r.Header.Get("X-Twilio-Signature")
			url := base + r.URL.RequestURI()
			if signature == "" || !validator.Validate(url, formParams(r), signature) {
				// Only the path: the query and body may carry PHI.
				log.Warn("rejected webhook without a valid Twilio signature", "path", r.URL.Path, "signature_present", signature != "")
				http.Error(w, "invalid Twilio signature", http.StatusForbidden)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

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
