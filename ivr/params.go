package ivr

import (
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Twilio's webhook parameters have fixed shapes (CONTRACT.md §1), and a
// signed request is not proof that they have them: the signature is
// HMAC-SHA1 over the URL and each sorted key+value joined with nothing
// between, so a captured request can be re-cut — one value swallowing the
// next key and value, or a key swallowing the start of its value — and
// still verify. A CallSid that swallowed CallStatus, Called and Caller
// would carry the patient's number into every place a call SID goes (logs,
// relay events, the clinic's CRM). Checking every parameter ConsentLine
// reads against the shape Twilio gives it closes that: a re-cut value can
// no longer have its parameter's shape.
//
// The shapes are written out as byte loops, not regular expressions (the
// expressions they implement are beside each, and
// TestShapesAgreeWithTheirExpressions holds them to those): every webhook
// pays for these checks, including each one refused past capacity, and
// regexp's matcher was a tenth of a refused webhook's cost.

// isCallSID: ^CA[0-9a-f]{32}$
func isCallSID(v string) bool { return isSID(v, "CA", false) }

// isAccountSID: ^AC[0-9a-fA-F]{32}$
func isAccountSID(v string) bool { return isSID(v, "AC", true) }

// isStreamSID: ^MZ[0-9a-f]{32}$
func isStreamSID(v string) bool { return isSID(v, "MZ", false) }

// isSID reports whether v is prefix followed by 32 hex digits, lower case
// unless anyCase.
func isSID(v, prefix string, anyCase bool) bool {
	if len(v) != len(prefix)+32 || v[:len(prefix)] != prefix {
		return false
	}
	for i := len(prefix); i < len(v); i++ {
		c := v[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || anyCase && 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// isE164: ^\+[1-9][0-9]{1,14}$
func isE164(v string) bool {
	if len(v) < 3 || len(v) > 16 || v[0] != '+' || v[1] == '0' {
		return false
	}
	return allBytes(v[1:], func(c byte) bool { return '0' <= c && c <= '9' })
}

// isDigits: ^[0-9*#]{0,32}$
func isDigits(v string) bool {
	return len(v) <= 32 && allBytes(v, func(c byte) bool { return '0' <= c && c <= '9' || c == '*' || c == '#' })
}

// isDuration: ^[0-9]{1,9}$
func isDuration(v string) bool {
	return len(v) >= 1 && len(v) <= 9 && allBytes(v, func(c byte) bool { return '0' <= c && c <= '9' })
}

// isStreamName: ^[A-Za-z0-9_.-]{1,64}$ (a stream's name is ours, from the
// TwiML; Twilio echoes it).
func isStreamName(v string) bool {
	return len(v) >= 1 && len(v) <= 64 && allBytes(v, func(c byte) bool {
		return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-'
	})
}

func allBytes(v string, ok func(byte) bool) bool {
	for i := 0; i < len(v); i++ {
		if !ok(v[i]) {
			return false
		}
	}
	return true
}

// streamEvents are the values Twilio gives a stream status callback's
// StreamEvent.
var streamEvents = map[string]bool{"stream-started": true, "stream-stopped": true, "stream-error": true}

// maxSpeech bounds a speech result. Twilio's transcripts of a short answer
// are tens of bytes; 4 KB is generous and keeps a re-cut that swallowed
// the rest of the request from passing as a transcript.
const maxSpeech = 4 << 10

// maxAddress bounds a client: or sip: address: Twilio refuses client names
// longer than 256 characters (error 31105), and a SIP URI Twilio passes on
// is of the same order.
const maxAddress = 256

// callStatuses are the values Twilio gives CallStatus.
var callStatuses = map[string]bool{
	"queued": true, "initiated": true, "ringing": true, "in-progress": true,
	"completed": true, "busy": true, "failed": true, "no-answer": true, "canceled": true,
}

// withheldCallerIDs are the words Twilio passes in From/To (and Caller,
// Called) when the caller withheld their number; Twilio used to translate
// them to keypad digits (+266696687 ANONYMOUS, +7378742833 RESTRICTED,
// +86282452253 UNAVAILABLE, +8656696 UNKNOWN), which are E.164-shaped and
// need no entry here. Compared case-insensitively: carriers spell them
// either way.
var withheldCallerIDs = []string{"anonymous", "restricted", "unavailable", "unknown"}

// paramRule is the shape one parameter must have when present.
type paramRule struct {
	name     string
	required bool
	valid    func(string) bool
}

// paramRules lists, in the order they are checked (so the parameter a
// refusal names is deterministic), every Twilio parameter a handler reads.
// Confidence and Stability are not here: out of shape they count as absent
// (see dropMalformedScores), never as an error.
func paramRules(accountSID string) []paramRule {
	return []paramRule{
		{"CallSid", true, isCallSID},
		// Hex case carries no meaning, and TWILIO_ACCOUNT_SID may be pasted in either.
		{"AccountSid", true, func(v string) bool { return isAccountSID(v) && strings.EqualFold(v, accountSID) }},
		{"From", false, isAddress},
		{"To", false, isAddress},
		{"Caller", false, isAddress},
		{"Called", false, isAddress},
		{"Digits", false, isDigits},
		{"SpeechResult", false, isSpeech},
		{"StableSpeechResult", false, isSpeech},
		{"UnstableSpeechResult", false, isSpeech},
		{"CallStatus", false, func(v string) bool { return callStatuses[v] }},
		{"CallDuration", false, isDuration},
		{"StreamSid", false, isStreamSID},
		{"StreamName", false, isStreamName},
		{"StreamEvent", false, func(v string) bool { return streamEvents[v] }},
		// Twilio's description of a stream error: text, bounded like speech.
		{"StreamError", false, isSpeech},
	}
}

// scoreParams are Twilio's recognizer scores, numbers in [0, 1].
var scoreParams = []string{"Confidence", "Stability"}

// checkParams returns the name of the first parameter in form that is
// missing when required, repeated, or out of shape; "" when all are fine.
// It never returns or records a value.
func checkParams(form url.Values, rules []paramRule) string {
	for _, rule := range rules {
		vs, present := form[rule.name]
		switch {
		case !present:
			if rule.required {
				return rule.name
			}
		// Twilio never repeats a parameter, and the signature check reads
		// only the first value (formParams), so a second one is unsigned.
		case len(vs) != 1:
			return rule.name
		case !rule.valid(vs[0]):
			return rule.name
		}
	}
	return ""
}

// dropMalformedScores removes a Confidence or Stability that is not a
// finite number in [0, 1], so handlers see it as absent: speech without a
// confidence asks the caller to confirm with a key, and a partial without
// a stability never decides. It returns the names of those dropped.
func dropMalformedScores(form url.Values) []string {
	var dropped []string
	for _, name := range scoreParams {
		vs, present := form[name]
		if !present {
			continue
		}
		// An empty one is absent already; only a value worth noting is logged.
		if len(vs) == 1 && vs[0] == "" {
			continue
		}
		if len(vs) != 1 || !isScore(vs[0]) {
			form.Del(name)
			dropped = append(dropped, name)
		}
	}
	return dropped
}

// isScore reports whether v is a finite number in [0, 1]: what
// parseConfidence reads as a score rather than as absent.
func isScore(v string) bool { return parseConfidence(v) != nil }

// isAddress reports whether v is a caller or called party as Twilio writes
// one: an E.164 number, a client: identity, a sip: URI, or a withheld
// caller ID. Empty counts as absent: Twilio leaves the field empty when it
// has no party to name (a Client call to an application, for one).
func isAddress(v string) bool {
	switch {
	case v == "":
		return true
	case isE164(v):
		return true
	case strings.HasPrefix(v, "client:"):
		return isURIBody(v[len("client:"):])
	case strings.HasPrefix(v, "sip:"):
		return isURIBody(v[len("sip:"):])
	}
	for _, w := range withheldCallerIDs {
		if strings.EqualFold(v, w) {
			return true
		}
	}
	return false
}

// isURIBody reports whether the part of a client: or sip: address after
// the scheme is 1 to maxAddress printable ASCII characters with none of the
// space, delimiter and unwise characters Twilio refuses in client names
// (error 31105).
func isURIBody(s string) bool {
	if s == "" || len(s) > maxAddress {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`<>#%"{}|\^[]`+"`", c) >= 0 {
			return false
		}
	}
	return true
}

// isSpeech reports whether v can be a recognizer transcript: valid UTF-8,
// at most maxSpeech bytes.
func isSpeech(v string) bool {
	return len(v) <= maxSpeech && utf8.ValidString(v)
}

// requireTwilioParams refuses a signed webhook whose Twilio parameters are
// out of shape (see paramRules) with 400 before any handler runs, so it
// records, relays and decides nothing. It logs one line naming the
// parameter and never its value, which may be the patient's number or
// words; the answer names only the parameter too. It runs after
// RequireTwilioSignature, which has parsed the form.
func requireTwilioParams(accountSID string, log *slog.Logger) func(http.Handler) http.Handler {
	rules := paramRules(accountSID)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if bad := checkParams(r.PostForm, rules); bad != "" {
				log.Warn("rejected webhook with a malformed Twilio parameter", "path", r.URL.Path, "param", bad)
				http.Error(w, "malformed Twilio parameter: "+bad, http.StatusBadRequest)
				return
			}
			for _, name := range dropMalformedScores(r.PostForm) {
				// r.Form holds the same body parameters: keep the two alike.
				r.Form.Del(name)
				log.Info("ignored a Twilio score that is not a number in [0, 1]", "path", r.URL.Path, "param", name)
			}
			next.ServeHTTP(w, r)
		})
	}
}
