package ivr

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// formContentType is the body type of every Twilio webhook.
const formContentType = "application/x-www-form-urlencoded"

// errSemicolon is url.ParseQuery's refusal of a ';' in a query.
var errSemicolon = errors.New("invalid semicolon separator in query")

// bodyBuffers hold webhook bodies while they are read; the parsed form
// keeps one string of the body, not the buffer.
var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// parseWebhookForm sets r.PostForm from a form-encoded body, as
// r.ParseForm does, leaving r.Form for net/http to build from it if
// anything asks (a nil r.Form is built on demand from r.PostForm and the
// query). The result is the standard library's, value for value
// (TestParseWebhookFormAgreesWithParseQuery); what differs is the cost,
// which every webhook pays, including each one a burst past capacity is
// refused: the map is sized once, a name or value with nothing to unescape
// is a slice of the body instead of a copy, and the body-plus-query r.Form
// that r.ParseForm builds and nothing here reads is not built. A body of
// another type goes to r.ParseForm unchanged.
func parseWebhookForm(r *http.Request) error {
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != formContentType {
		return r.ParseForm()
	}
	if body, read := intakeBody(r); read {
		form, err := parseFormBody(body)
		r.PostForm = form
		return err
	}
	body, err := readBody(r.Body)
	if err != nil {
		return err
	}
	form, err := parseFormBody(body)
	r.PostForm = form
	return err
}

// readBody reads body whole into one string, through a pooled buffer.
func readBody(body io.Reader) (string, error) {
	buf := bodyBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	defer bodyBuffers.Put(buf)
	_, err := buf.ReadFrom(body)
	return buf.String(), err
}

// refuseBody answers a webhook whose body could not be read or parsed:
// 413 for one larger than maxWebhookBody (not Twilio's), 400 otherwise.
func refuseBody(w http.ResponseWriter, err error) {
	if tooBig := (*http.MaxBytesError)(nil); errors.As(err, &tooBig) {
		http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	http.Error(w, "malformed form body", http.StatusBadRequest)
}

// parseFormBody is url.ParseQuery: every well-formed pair is kept and the
// first error is returned.
func parseFormBody(body string) (url.Values, error) {
	n := strings.Count(body, "&") + 1
	form := make(url.Values, n)
	// One backing array for the values; each name's slice is capped at its
	// one value, so a repeated name appends to a copy, never into the next.
	values := make([]string, 0, n)
	var firstErr error
	for body != "" {
		var pair string
		pair, body, _ = strings.Cut(body, "&")
		if strings.Contains(pair, ";") {
			if firstErr == nil {
				firstErr = errSemicolon
			}
			continue
		}
		if pair == "" {
			continue
		}
		name, value, _ := strings.Cut(pair, "=")
		name, err := unescapeFormPart(name)
		if err == nil {
			value, err = unescapeFormPart(value)
		}
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if vs, repeated := form[name]; repeated {
			form[name] = append(vs, value)
			continue
		}
		values = append(values, value)
		form[name] = values[len(values)-1 : len(values) : len(values)]
	}
	return form, firstErr
}

// unescapeFormPart is url.QueryUnescape, without a copy when there is
// nothing to unescape.
func unescapeFormPart(s string) (string, error) {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' || s[i] == '+' {
			return url.QueryUnescape(s)
		}
	}
	return s, nil
}
