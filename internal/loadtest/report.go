package loadtest

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/consentline/consentline/ivr"
)

// Report is what a load test measured. Recorded, RecordedFrom and Memory
// are the caller's to fill in: they are read from the instance's database
// or /metrics, which this package does not open.
type Report struct {
	Config Config

	Started int // calls started
	// PeakInFlight is the most calls that were in flight at once.
	PeakInFlight int
	Completed    int // calls that finished without an error
	Elapsed      time.Duration

	// Routes: latency per route, in the order a call meets them.
	Routes []RouteLatency
	// Holds counts answers with the hold line (a redirect to /voice/resume).
	Holds int
	// Errors counts failed calls (a non-2xx answer, a transport error, a
	// TwiML document the call cannot go on from, a refused stream), by kind
	// in ErrorKinds, with the first few messages in ErrorSamples.
	Errors       int
	ErrorKinds   map[string]int
	ErrorSamples []string
	// Duplicates counts final Gather results delivered twice.
	Duplicates int

	// Expected is the decision each call that finished without an error
	// should have left, counted by outcome; CleanCalls are their SIDs and
	// AllCalls every call's.
	Expected   map[string]int
	CleanCalls []string
	AllCalls   []string

	// Recorded is the decisions the instance recorded, by outcome (nil:
	// not read back), read from RecordedFrom.
	Recorded     map[string]int
	RecordedFrom string
	// Memory is the instance's resident memory, when read.
	Memory *Memory
}

// RouteLatency is one route's answer times.
type RouteLatency struct {
	Route              string
	Count              int
	P50, P95, P99, Max time.Duration
}

// Memory is the instance's resident set size at idle and at its peak
// during the test (process_resident_memory_bytes).
type Memory struct {
	IdleBytes, PeakBytes float64
}

// routeOrder is the order a call meets the routes.
var routeOrder = []string{ivr.PathIncoming, ivr.PathHeard, RouteStreamUpgrade, ivr.PathPartial, ivr.PathGather, ivr.PathResume, ivr.PathDecided, ivr.PathStatus}

func (t *Test) report(elapsed time.Duration) *Report {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := &Report{
		Config:       t.cfg,
		Started:      int(t.started.Load()),
		PeakInFlight: t.peakInFlight,
		Completed:    len(t.clean),
		Elapsed:      elapsed,
		Holds:        int(t.holds.Load()),
		Errors:       int(t.errs.Load()),
		ErrorKinds:   maps.Clone(t.errKinds),
		ErrorSamples: slices.Clone(t.samples),
		Duplicates:   int(t.duplicates.Load()),
		Expected:     maps.Clone(t.expected),
		CleanCalls:   slices.Clone(t.clean),
		AllCalls:     slices.Clone(t.all),
	}
	routes := slices.Collect(maps.Keys(t.latencies))
	rank := func(route string) int {
		if i := slices.Index(routeOrder, route); i >= 0 {
			return i
		}
		return len(routeOrder)
	}
	slices.SortFunc(routes, func(a, b string) int {
		if c := rank(a) - rank(b); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	for _, route := range routes {
		d := sortDurations(slices.Clone(t.latencies[route]))
		r.Routes = append(r.Routes, RouteLatency{
			Route: route, Count: len(d),
			P50: percentile(d, 0.50), P95: percentile(d, 0.95), P99: percentile(d, 0.99), Max: d[len(d)-1],
		})
	}
	return r
}

// percentile is the nearest-rank percentile of sorted d (not empty).
func percentile(d []time.Duration, p float64) time.Duration {
	i := int(float64(len(d))*p+0.999999) - 1
	return d[min(max(i, 0), len(d)-1)]
}

// CallsPerSecond is the calls finished without an error per second of the
// test.
func (r *Report) CallsPerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Completed) / r.Elapsed.Seconds()
}

// Route returns the latencies of route, if any request went to it.
func (r *Report) Route(route string) (RouteLatency, bool) {
	for _, rl := range r.Routes {
		if rl.Route == route {
			return rl, true
		}
	}
	return RouteLatency{}, false
}

// WebhookP99 is the slowest p99 of the webhook routes (the stream's
// upgrade is not a webhook).
func (r *Report) WebhookP99() time.Duration {
	var worst time.Duration
	for _, rl := range r.Routes {
		if rl.Route != RouteStreamUpgrade {
			worst = max(worst, rl.P99)
		}
	}
	return worst
}

// Problem says why the test failed: errors, or decisions recorded other
// than expected (or not read back). nil: it passed.
func (r *Report) Problem() error {
	var why []string
	if r.Errors > 0 {
		why = append(why, fmt.Sprintf("%d calls failed", r.Errors))
	}
	switch {
	case r.Recorded == nil:
		why = append(why, "decisions not read back")
	case !r.decisionsMatch():
		why = append(why, fmt.Sprintf("%d decisions recorded, %d expected", total(r.Recorded), total(r.Expected)))
	}
	if len(why) == 0 {
		return nil
	}
	return fmt.Errorf("load test failed: %s", strings.Join(why, "; "))
}

func (r *Report) decisionsMatch() bool {
	for _, o := range r.outcomes() {
		if r.Recorded[o] != r.Expected[o] {
			return false
		}
	}
	return true
}

// outcomes are the outcomes to show: the three, and any other the instance
// reported.
func (r *Report) outcomes() []string {
	out := slices.Clone(Outcomes)
	for o := range r.Recorded {
		if !slices.Contains(out, o) {
			out = append(out, o)
		}
	}
	return out
}

func total(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// WriteTo prints the report for an operator.
func (r *Report) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	p := func(format string, args ...any) { fmt.Fprintf(cw, format, args...) }
	c := r.Config
	rateText := "unlimited"
	if c.Rate > 0 {
		rateText = fmt.Sprintf("%g/s", c.Rate)
	}
	streams := "off"
	if c.Streams {
		streams = "on (real time)"
	}
	p("consentline loadtest: %d calls against %s (concurrency %d, rate %s, media streams %s, duplicates %g)\n",
		c.Calls, c.Target, c.Concurrency, rateText, streams, c.Duplicates)
	p("finished in %.1f s: %.1f calls/s (%d of %d started calls without an error; at most %d in flight)\n\n",
		r.Elapsed.Seconds(), r.CallsPerSecond(), r.Completed, r.Started, r.PeakInFlight)

	p("%-26s %7s %9s %9s %9s %9s\n", "route", "count", "p50", "p95", "p99", "max")
	for _, rl := range r.Routes {
		p("%-26s %7d %9s %9s %9s %9s\n", rl.Route, rl.Count, ms(rl.P50), ms(rl.P95), ms(rl.P99), ms(rl.Max))
	}
	p("\nwebhook p99 (slowest route): %s\n", ms(r.WebhookP99()))
	p("holds: %d (answers with the hold line: the instance could not decide in time)\n", r.Holds)
	p("duplicates: %d final answers delivered twice\n", r.Duplicates)
	p("errors: %d", r.Errors)
	if r.Errors > 0 {
		kinds := slices.Sorted(maps.Keys(r.ErrorKinds))
		parts := make([]string, 0, len(kinds))
		for _, k := range kinds {
			parts = append(parts, fmt.Sprintf("%s %d", k, r.ErrorKinds[k]))
		}
		p(" (%s)\n", strings.Join(parts, ", "))
		for _, s := range r.ErrorSamples {
			p("  e.g. %s\n", s)
		}
	} else {
		p("\n")
	}

	if r.Recorded == nil {
		p("decisions: expected %d, not read back\n", total(r.Expected))
	} else {
		p("decisions (recorded: %s):\n", r.RecordedFrom)
		p("  %-14s %9s %9s\n", "outcome", "expected", "recorded")
		for _, o := range r.outcomes() {
			p("  %-14s %9d %9d\n", o, r.Expected[o], r.Recorded[o])
		}
		verdict := "ok"
		if !r.decisionsMatch() {
			verdict = "MISMATCH"
		}
		p("  %-14s %9d %9d  %s\n", "total", total(r.Expected), total(r.Recorded), verdict)
	}
	if m := r.Memory; m != nil {
		p("instance memory (resident): %.1f MiB idle, %.1f MiB peak", m.IdleBytes/(1<<20), m.PeakBytes/(1<<20))
		if r.PeakInFlight > 0 && m.PeakBytes > m.IdleBytes {
			p(", ≈ %.0f KiB per call in flight ((peak − idle) / %d at most in flight)", (m.PeakBytes-m.IdleBytes)/1024/float64(r.PeakInFlight), r.PeakInFlight)
		}
		p("\n")
	}
	return cw.n, cw.err
}

// ms prints a duration in milliseconds with a precision that suits it.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	if v < 10 {
		return fmt.Sprintf("%.2fms", v)
	}
	return fmt.Sprintf("%.0fms", v)
}

type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(b []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
	return n, err
}
