// Package telemetrytest reads metrics back for tests: the value of one
// series, so a test can check that the event it caused moved it.
package telemetrytest

import (
	"slices"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/consentline/consentline/internal/telemetry"
)

// Value returns the value of the series of the metric named name (with its
// namespace, e.g. "consentline_holds_total") whose labels include all of
// labels (name, value pairs): a counter's or gauge's value, a histogram's
// sample count; summed over the series that match, 0 when none does.
func Value(t testing.TB, m *telemetry.Metrics, name string, labels ...string) float64 {
	t.Helper()
	if len(labels)%2 != 0 {
		t.Fatalf("telemetrytest.Value(%s): labels must be name, value pairs", name)
	}
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	i := slices.IndexFunc(families, func(f *dto.MetricFamily) bool { return f.GetName() == name })
	if i < 0 {
		t.Fatalf("no metric %s in the registry", name)
	}
	var sum float64
	for _, s := range families[i].GetMetric() {
		if !hasLabels(s, labels) {
			continue
		}
		switch {
		case s.Counter != nil:
			sum += s.Counter.GetValue()
		case s.Gauge != nil:
			sum += s.Gauge.GetValue()
		case s.Histogram != nil:
			sum += float64(s.Histogram.GetSampleCount())
		}
	}
	return sum
}

func hasLabels(s *dto.Metric, labels []string) bool {
	for i := 0; i < len(labels); i += 2 {
		if !slices.ContainsFunc(s.GetLabel(), func(p *dto.LabelPair) bool {
			return p.GetName() == labels[i] && p.GetValue() == labels[i+1]
		}) {
			return false
		}
	}
	return true
}
