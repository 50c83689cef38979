package loadtest

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	d := make([]time.Duration, 100)
	for i := range d {
		d[i] = time.Duration(i+1) * time.Millisecond
	}
	for p, want := range map[float64]time.Duration{0.50: 50 * time.Millisecond, 0.95: 95 * time.Millisecond, 0.99: 99 * time.Millisecond, 1: 100 * time.Millisecond} {
		if got := percentile(d, p); got != want {
			t.Errorf("p%g = %s, want %s", p*100, got, want)
		}
	}
	if got := percentile([]time.Duration{7}, 0.99); got != 7 {
		t.Errorf("p99 of one = %s", got)
	}
}

func TestParseMetrics(t *testing.T) {
	text := `# TYPE consentline_decisions_total counter
consentline_decisions_total{outcome="granted",source="dtmf",timing="estimated"} 3
consentline_decisions_total{outcome="granted",source="speech",timing="measured"} 2
consentline_decisions_total{outcome="no_response",source="status_callback",timing="estimated"} 1
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 3.3554432e+07
`
	s, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if s.Decisions["granted"] != 5 || s.Decisions["no_response"] != 1 || s.ResidentBytes != 32<<20 {
		t.Errorf("parsed %+v", s)
	}
	before := Scrape{Decisions: map[string]int{"granted": 4, "no_response": 1}}
	if d := s.Since(before); len(d) != 1 || d["granted"] != 1 {
		t.Errorf("since = %v, want granted 1", d)
	}
	if _, err := parseMetrics(strings.NewReader("not { metrics")); err == nil {
		t.Error("garbage parsed")
	}
}

// A report fails on errors, on decisions other than expected, and when
// the decisions were not read back; it names why.
func TestReportProblem(t *testing.T) {
	ok := &Report{Expected: map[string]int{Granted: 2, NoResponse: 1}, Recorded: map[string]int{Granted: 2, NoResponse: 1}}
	if err := ok.Problem(); err != nil {
		t.Errorf("matching report: %v", err)
	}
	for name, c := range map[string]struct {
		r    Report
		want string
	}{
		"errors":      {Report{Errors: 2, Expected: map[string]int{}, Recorded: map[string]int{}}, "2 calls failed"},
		"one missing": {Report{Expected: map[string]int{Granted: 2}, Recorded: map[string]int{Granted: 1}}, "1 decisions recorded, 2 expected"},
		// Same total, different outcomes: still a mismatch.
		"swapped":     {Report{Expected: map[string]int{Granted: 1}, Recorded: map[string]int{Declined: 1}}, "1 decisions recorded, 1 expected"},
		"not read":    {Report{Expected: map[string]int{Granted: 1}}, "not read back"},
		"extra other": {Report{Expected: map[string]int{}, Recorded: map[string]int{"other": 1}}, "1 decisions recorded, 0 expected"},
	} {
		err := c.r.Problem()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
		var buf bytes.Buffer
		if _, err := c.r.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		if c.r.Recorded != nil && c.r.Errors == 0 && !strings.Contains(buf.String(), "MISMATCH") {
			t.Errorf("%s: report does not say MISMATCH:\n%s", name, buf.String())
		}
	}
}
