package telemetry_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/consentline/consentline/internal/telemetry"
)

// dashboardFile is the Grafana dashboard the README points operators to.
const dashboardFile = "../../docs/grafana/consentline.json"

// panel is the part of a Grafana panel the test reads: its queries, and
// the panels of a collapsed row.
type panel struct {
	Title   string  `json:"title"`
	Type    string  `json:"type"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

var (
	// quoted strings (label values, regexps) and label matchers hold no
	// metric names; PromQL's own words are not metric names either.
	quoted   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	matchers = regexp.MustCompile(`\{[^}]*\}`)
	grouping = regexp.MustCompile(`\b(?:by|without)\s*\([^)]*\)`)
	ranges   = regexp.MustCompile(`\[[^\]]*\]`)
	words    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promql   = map[string]bool{
		"sum": true, "max": true, "min": true, "avg": true, "count": true, "rate": true, "increase": true, "irate": true,
		"histogram_quantile": true, "clamp_min": true, "clamp_max": true, "abs": true, "topk": true, "bottomk": true,
		"and": true, "or": true, "unless": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"offset": true, "bool": true, "label_values": true, "e": true,
	}
	dashboardMetric = regexp.MustCompile(`^(consentline|go|process)_`)
	fqName          = regexp.MustCompile(`fqName: "([^"]+)"`)
)

// metricsIn returns the metric names a PromQL expression queries.
func metricsIn(expr string) []string {
	e := quoted.ReplaceAllString(expr, `""`)
	e = matchers.ReplaceAllString(e, " ")
	e = grouping.ReplaceAllString(e, " ")
	e = ranges.ReplaceAllString(e, " ")
	var out []string
	for _, w := range words.FindAllString(e, -1) {
		if !promql[w] {
			out = append(out, w)
		}
	}
	return out
}

func TestMetricsInExpr(t *testing.T) {
	got := metricsIn(`histogram_quantile(0.99, sum by (le, route) (rate(consentline_x_bucket{instance=~"$instance", route="/voice/go_y"}[$__rate_interval]))) / clamp_min(sum(go_goroutines), 1e-9)`)
	if want := []string{"consentline_x_bucket", "go_goroutines"}; !slices.Equal(got, want) {
		t.Errorf("metricsIn = %v, want %v", got, want)
	}
}

// Every metric the dashboard queries exists: it is described by the
// registry serve exposes at /metrics (descriptors, not a scrape, so a
// vector with no series yet still counts), as itself or, for a histogram
// or summary, as its _bucket, _sum or _count series.
func TestDashboardQueriesExistingMetrics(t *testing.T) {
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		SchemaVersion int     `json:"schemaVersion"`
		Panels        []panel `json:"panels"`
		Templating    struct {
			List []struct {
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s does not parse: %v", dashboardFile, err)
	}
	if dash.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want a current Grafana dashboard (39)", dash.SchemaVersion)
	}
	if !slices.ContainsFunc(dash.Templating.List, func(v struct {
		Type  string `json:"type"`
		Query any    `json:"query"`
	}) bool {
		return v.Type == "datasource" && v.Query == "prometheus"
	}) {
		t.Error("no Prometheus datasource variable")
	}

	exists := map[string]bool{}
	for _, d := range telemetry.New().Descriptors() {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("descriptor without a name: %s", d)
		}
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			exists[m[1]+suffix] = true
		}
	}

	var walk func(ps []panel)
	queried := map[string]bool{}
	panels := 0
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			panels++
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, target := range p.Targets {
				names := metricsIn(target.Expr)
				if len(names) == 0 {
					t.Errorf("panel %q: no metric in %q", p.Title, target.Expr)
				}
				for _, n := range names {
					queried[n] = true
					if !dashboardMetric.MatchString(n) {
						t.Errorf("panel %q queries %q: not a ConsentLine, Go or process metric (or the test misread %q)", p.Title, n, target.Expr)
					} else if !exists[n] {
						t.Errorf("panel %q queries %s, which /metrics does not have", p.Title, n)
					}
				}
			}
		}
	}
	walk(dash.Panels)
	if panels < 10 {
		t.Errorf("%d panels", panels)
	}
	// And the other way: every ConsentLine metric is on the dashboard.
	for name := range exists {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		if !strings.HasPrefix(name, "consentline_") || name != base {
			continue
		}
		if !queried[name] && !queried[name+"_bucket"] && !queried[name+"_count"] && !queried[name+"_sum"] {
			t.Errorf("%s is on no panel", name)
		}
	}
}
