package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape is what the load test reads from the instance's /metrics.
type Scrape struct {
	// Decisions is consentline_decisions_total summed by outcome.
	Decisions map[string]int
	// ResidentBytes is process_resident_memory_bytes (0: not exported,
	// e.g. not on Linux).
	ResidentBytes float64
}

// ErrMetricsUnauthorized is /metrics answering 401: the instance has a
// METRICS_TOKEN and the scrape did not carry it.
var ErrMetricsUnauthorized = errors.New("/metrics answered 401: it wants the instance's METRICS_TOKEN")

// ReadMetrics scrapes target's /metrics, with token as the bearer token
// when set.
func ReadMetrics(ctx context.Context, client *http.Client, target, token string) (Scrape, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(target, "/")+"/metrics", nil)
	if err != nil {
		return Scrape{}, err
	}
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return Scrape{}, fmt.Errorf("scraping /metrics: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return Scrape{}, ErrMetricsUnauthorized
	case resp.StatusCode != http.StatusOK:
		return Scrape{}, fmt.Errorf("scraping /metrics: status %d", resp.StatusCode)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (Scrape, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return Scrape{}, fmt.Errorf("parsing /metrics: %w", err)
	}
	s := Scrape{Decisions: map[string]int{}}
	if f, ok := families["consentline_decisions_total"]; ok {
		for _, m := range f.GetMetric() {
			outcome := "other"
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" {
					outcome = l.GetValue()
				}
			}
			s.Decisions[outcome] += int(m.GetCounter().GetValue())
		}
	}
	if f, ok := families["process_resident_memory_bytes"]; ok && len(f.GetMetric()) > 0 {
		s.ResidentBytes = f.GetMetric()[0].GetGauge().GetValue()
	}
	return s, nil
}

// Since returns the decisions recorded between before and s, by outcome
// (outcomes with none left out).
func (s Scrape) Since(before Scrape) map[string]int {
	out := map[string]int{}
	for o, n := range s.Decisions {
		if d := n - before.Decisions[o]; d != 0 {
			out[o] = d
		}
	}
	return out
}
