package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// DeliveryOutcome classifies one delivery attempt. (Named apart from
// consent.Outcome, what a caller's answer decided.)
type DeliveryOutcome int

const (
	// Delivered: the hook answered 2xx.
	Delivered DeliveryOutcome = iota
	// Retry: 5xx, 408, 429, a timeout or a connection error — the receiver
	// may well accept the same request later.
	Retry
	// Dead: any other answer (4xx other than 408/429, or a 1xx/3xx that the
	// client could not follow): sending the same request again cannot
	// succeed, so it goes to the dead letters for an operator to look at.
	Dead
)

func (o DeliveryOutcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Retry:
		return "retry"
	}
	return "dead"
}

// DefaultAttemptTimeout bounds one POST.
const DefaultAttemptTimeout = 10 * time.Second

// Attempt is the result of one delivery attempt. Err never contains a
// request or response body: at most a status line or a transport error
// stripped of the hook URL (whose path is itself a credential).
type Attempt struct {
	Outcome    DeliveryOutcome
	Status     int
	RetryAfter time.Duration // from a Retry-After header on 429/5xx, else 0
	Err        error
}

// Zapier posts events to a Catch Hook.
type Zapier struct {
	URL    string
	Signer *Signer
	// Client defaults to a client with no overall timeout (the per-attempt
	// context bounds it) that does not follow redirects: a Catch Hook that
	// redirects is misconfigured, and following it would re-send PHI to
	// wherever it points.
	Client  *http.Client
	Timeout time.Duration    // per attempt; DefaultAttemptTimeout if zero
	Now     func() time.Time // for webhook-timestamp and Retry-After dates
}

var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// Deliver POSTs body with the Standard Webhooks headers for event id. Every
// attempt carries the same webhook-id and a fresh timestamp and signature.
func (z *Zapier) Deliver(ctx context.Context, id string, body []byte) Attempt {
	if z.URL == "" {
		return Attempt{Outcome: Dead, Err: errors.New("relay: ZAPIER_WEBHOOK_URL is not set")}
	}
	if z.Signer == nil {
		return Attempt{Outcome: Dead, Err: errors.New("relay: RELAY_SIGNING_SECRET is not set")}
	}
	timeout := z.Timeout
	if timeout <= 0 {
		timeout = DefaultAttemptTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, z.URL, bytes.NewReader(body))
	if err != nil {
		return Attempt{Outcome: Dead, Err: errors.New("relay: ZAPIER_WEBHOOK_URL is not a valid URL")}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "ConsentLine-Relay/1")
	z.Signer.SetHeaders(req.Header, id, z.now(), body)

	client := z.Client
	if client == nil {
		client = noRedirects
	}
	resp, err := client.Do(req)
	if err != nil {
		return Attempt{Outcome: Retry, Err: transportError(err, timeout)}
	}
	defer resp.Body.Close()
	// Drain a little so the connection can be reused; the body itself is
	// never looked at, since a receiver may echo what we sent.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))

	out, after := ClassifyResponse(resp.StatusCode, resp.Header, z.now())
	a := Attempt{Outcome: out, Status: resp.StatusCode, RetryAfter: after}
	if out != Delivered {
		a.Err = fmt.Errorf("relay: catch hook answered %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	return a
}

func (z *Zapier) now() time.Time {
	if z.Now != nil {
		return z.Now()
	}
	return time.Now()
}

// ClassifyResponse maps a catch hook's response status to a DeliveryOutcome
// and, for retryable answers, the wait the receiver asked for in
// Retry-After.
func ClassifyResponse(status int, h http.Header, now time.Time) (DeliveryOutcome, time.Duration) {
	switch {
	case status >= 200 && status < 300:
		return Delivered, 0
	case status >= 500, status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		d, _ := ParseRetryAfter(h.Get("Retry-After"), now)
		return Retry, d
	}
	return Dead, 0
}

// ParseRetryAfter reads a Retry-After value: delay-seconds or an HTTP-date.
// A date in the past means "now" (0, true).
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(min(secs, int64(365*24*3600))) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// transportError describes a failed round trip without the URL, which
// *url.Error would otherwise quote in full.
func transportError(err error, timeout time.Duration) error {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("relay: catch hook did not answer within %s", timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var op *net.OpError
	if errors.As(err, &op) {
		return fmt.Errorf("relay: catch hook unreachable: %s: %v", op.Op, op.Err)
	}
	if errors.Is(err, context.Canceled) {
		return errors.New("relay: delivery canceled")
	}
	return errors.New("relay: catch hook unreachable")
}
