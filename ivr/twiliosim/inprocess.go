package twiliosim

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Signed is a webhook signed beforehand: its form body and
// X-Twilio-Signature. Load generators sign before the clock starts, since
// signing is Twilio's work, not the server's.
type Signed struct {
	Body, Signature string
}

// SignWebhook signs params for fullURL.
func SignWebhook(authToken, fullURL string, params url.Values) Signed {
	return Signed{Body: params.Encode(), Signature: Sign(authToken, fullURL, params)}
}

// Request returns s as the request a server's handler receives for target
// (path and query), for a load generator calling the handler in-process.
// It is what httptest.NewRequest returns, built directly: httptest reads
// request text through a fresh 4 KB bufio.Reader, and at tens of thousands
// of webhooks a second that garbage is the generator's cost charged to the
// server's process.
func (s Signed) Request(target string) *http.Request {
	u, err := url.ParseRequestURI(target)
	if err != nil {
		panic("twiliosim: bad target " + target)
	}
	return &http.Request{
		Method:     http.MethodPost,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header: http.Header{
			"Content-Type":       {"application/x-www-form-urlencoded"},
			"X-Twilio-Signature": {s.Signature},
		},
		Body:          io.NopCloser(strings.NewReader(s.Body)),
		ContentLength: int64(len(s.Body)),
		Host:          "example.com",
		RemoteAddr:    "192.0.2.1:1234",
		RequestURI:    target,
	}
}

// Answer is a minimal http.ResponseWriter for in-process calls: the status
// and body, without httptest.ResponseRecorder's snapshots.
type Answer struct {
	Code   int
	Body   bytes.Buffer
	header http.Header
}

func (a *Answer) Header() http.Header {
	if a.header == nil {
		a.header = http.Header{}
	}
	return a.header
}

func (a *Answer) WriteHeader(code int) {
	if a.Code == 0 {
		a.Code = code
	}
}

func (a *Answer) Write(p []byte) (int, error) {
	a.WriteHeader(http.StatusOK)
	return a.Body.Write(p)
}
