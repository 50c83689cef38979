package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/internal/loadtest"
	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/ivr"
)

// startInstance serves the app on the embedded database in env's DATA_DIR
// as serve wires it (webhooks, media streams, /metrics), on a loopback
// listener, and returns its URL. PUBLIC_BASE_URL stays env's: the load
// test signs for it and sends to the listener, as behind a proxy.
func startInstance(t *testing.T, env map[string]string) string {
	t.Helper()
	ctx := context.Background()
	s, err := loadSettings(getenv(env))
	if err != nil {
		t.Fatal(err)
	}
	outbox := &outboxSettings{keys: s.Keys}
	metrics := telemetry.New()
	b, err := openBackends(ctx, "", "", s.DataDir, outbox, metrics)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg, _, err := newApp(ctx, s, b, log)
	if err != nil {
		b.close()
		t.Fatal(err)
	}
	app := ivr.New(cfg)
	streams, err := mountStreams(app, cfg, s, log, metrics)
	if err != nil {
		b.close()
		t.Fatal(err)
	}
	srv := httptest.NewServer(telemetry.Serve(app.Router(), log, metrics, s.MetricsToken))
	t.Cleanup(func() {
		srv.Close()
		if streams != nil {
			streams.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = app.Drain(ctx)
		b.close()
	})
	return srv.URL
}

// routeCount reads a route's request count from the report's table.
func routeCount(t *testing.T, report, route string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(route) + `\s+(\d+)\s+\S+ms\s+\S+ms\s+\S+ms\s+\S+ms$`).FindStringSubmatch(report)
	if m == nil {
		t.Errorf("no latency line for %s in the report:\n%s", route, report)
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// decisionLine reads one outcome's expected and recorded counts.
func decisionLine(t *testing.T, report, outcome string) (expected, recorded int) {
	t.Helper()
	m := regexp.MustCompile(`(?m)^  ` + outcome + `\s+(\d+)\s+(\d+)`).FindStringSubmatch(report)
	if m == nil {
		t.Fatalf("no decision line for %s in the report:\n%s", outcome, report)
	}
	expected, _ = strconv.Atoi(m[1])
	recorded, _ = strconv.Atoi(m[2])
	return expected, recorded
}

func TestLoadtestWebhooks(t *testing.T) {
	env := validEnv()
	env["DATA_DIR"] = t.TempDir()
	target := startInstance(t, env)

	code, out, errOut := runCmd(t, env, "loadtest", "--target", target, "--public-base-url", env["PUBLIC_BASE_URL"],
		"--calls", "40", "--concurrency", "8", "--duplicates", "0.25", "--data-dir", env["DATA_DIR"])
	if code != 0 {
		t.Fatalf("loadtest: exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"(40 of 40 started calls without an error; at most 8 in flight)", "\nerrors: 0\n", "consent_records in the embedded database"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// Every call starts and ends; the mix has 7 answered kinds in 8, each
	// answered after the must-hear redirect, and 3 kinds that answer twice.
	if n := routeCount(t, out, ivr.PathIncoming); n != 40 {
		t.Errorf("%d incoming webhooks, want 40", n)
	}
	if n := routeCount(t, out, ivr.PathStatus); n != 40 {
		t.Errorf("%d status callbacks, want 40", n)
	}
	if n := routeCount(t, out, ivr.PathHeard); n != 35 {
		t.Errorf("%d must-hear redirects, want 35", n)
	}
	dups := regexp.MustCompile(`duplicates: (\d+) final`).FindStringSubmatch(out)
	if dups == nil {
		t.Fatalf("no duplicates line:\n%s", out)
	}
	nDups, _ := strconv.Atoi(dups[1])
	holds := regexp.MustCompile(`holds: (\d+)`).FindStringSubmatch(out)
	nHolds, _ := strconv.Atoi(holds[1])
	// Each hold adds a retry of the answer; a duplicate adds one delivery.
	if n := routeCount(t, out, ivr.PathGather); n < 35+15+nDups || n > 35+15+nDups+2*nHolds {
		t.Errorf("%d gather deliveries, want 50 answers plus %d duplicates (plus retries after %d holds)", n, nDups, nHolds)
	}
	for outcome, want := range map[string]int{"granted": 25, "declined": 10, "no_response": 5} {
		if exp, rec := decisionLine(t, out, outcome); exp != want || rec != want {
			t.Errorf("%s: expected %d, recorded %d; want %d of each", outcome, exp, rec, want)
		}
	}
	if !regexp.MustCompile(`(?m)^  total\s+40\s+40  ok$`).MatchString(out) {
		t.Errorf("no matching total:\n%s", out)
	}

	// Against the wrong auth token every webhook is refused: errors, and a
	// failing exit status.
	wrong := validEnv()
	wrong["TWILIO_AUTH_TOKEN"] = "not-the-instances-token"
	code, out, errOut = runCmd(t, wrong, "loadtest", "--target", target, "--public-base-url", env["PUBLIC_BASE_URL"],
		"--calls", "4", "--concurrency", "2", "--data-dir", env["DATA_DIR"])
	if code != 1 || !strings.Contains(out, "errors: 4 (status 403 4)") || !strings.Contains(errOut, "4 calls failed") {
		t.Errorf("with the wrong token: exit %d\n%s%s", code, out, errOut)
	}
}

func TestLoadtestStreams(t *testing.T) {
	env := validEnv()
	env["DATA_DIR"] = t.TempDir()
	env["METRICS_TOKEN"] = "loadtest-metrics-token-0123456789"
	target := startInstance(t, env)

	// Without the token /metrics cannot be read: said before any call.
	noToken := validEnv()
	code, _, errOut := runCmd(t, noToken, "loadtest", "--target", target, "--public-base-url", env["PUBLIC_BASE_URL"], "--calls", "1")
	if code != exitUsage || !strings.Contains(errOut, "--metrics-token is required") {
		t.Errorf("without the metrics token: exit %d: %s", code, errOut)
	}

	// Real time: each streamed call takes about 7 s, all three at once.
	code, out, errOut := runCmd(t, env, "loadtest", "--target", target, "--public-base-url", env["PUBLIC_BASE_URL"],
		"--calls", "3", "--concurrency", "3", "--streams", "--duplicates", "1")
	if code != 0 {
		t.Fatalf("loadtest --streams: exit %d\n%s%s", code, out, errOut)
	}
	if n := routeCount(t, out, loadtest.RouteStreamUpgrade); n != 3 {
		t.Errorf("%d stream upgrades, want 3", n)
	}
	if !strings.Contains(out, "duplicates: 3 final answers") || !strings.Contains(out, "consentline_decisions_total before and after") {
		t.Errorf("report:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^  total\s+3\s+3  ok$`).MatchString(out) {
		t.Errorf("decisions do not match:\n%s", out)
	}
	if exp, rec := decisionLine(t, out, "granted"); exp != 2 || rec != 2 {
		t.Errorf("granted: expected %d, recorded %d; want 2", exp, rec)
	}

	// The streams really played: every decision's timing was measured on
	// its call's stream, not estimated.
	req, _ := http.NewRequest(http.MethodGet, target+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+env["METRICS_TOKEN"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	measured := 0
	for _, m := range regexp.MustCompile(`(?m)^consentline_decisions_total\{[^}]*timing="measured"[^}]*\} (\d+)$`).FindAllStringSubmatch(string(body), -1) {
		n, _ := strconv.Atoi(m[1])
		measured += n
	}
	if measured != 3 {
		t.Errorf("%d decisions with measured timing, want 3:\n%s", measured, body)
	}
}

func TestLoadtestSettings(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name    string
		change  map[string]string
		args    []string
		mention string
	}{
		{"no target", nil, nil, "--target is required"},
		{"target with a path", nil, []string{"--target", "http://127.0.0.1:1/voice"}, "--target must be an absolute http(s) URL without path"},
		{"no account SID", map[string]string{"TWILIO_ACCOUNT_SID": ""}, []string{"--target", "http://127.0.0.1:1"}, "TWILIO_ACCOUNT_SID must be the instance's"},
		{"no auth token", map[string]string{"TWILIO_AUTH_TOKEN": ""}, []string{"--target", "http://127.0.0.1:1"}, "TWILIO_AUTH_TOKEN is required"},
		{"no calls", nil, []string{"--target", "http://127.0.0.1:1", "--calls", "0"}, "--calls must be at least 1"},
		{"bad duplicates", nil, []string{"--target", "http://127.0.0.1:1", "--duplicates", "2"}, "--duplicates must be a fraction"},
		{"both databases", nil, []string{"--target", "http://127.0.0.1:1", "--database-url", "postgres://x", "--data-dir", dir}, "--database-url and --data-dir are exclusive"},
		{"no database in data dir", nil, []string{"--target", "http://127.0.0.1:1", "--data-dir", dir}, "--data-dir must be the instance's DATA_DIR: there is no consentline.db"},
		{"stray argument", nil, []string{"--target", "http://127.0.0.1:1", "now"}, `unexpected argument "now"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := validEnv()
			for k, v := range c.change {
				env[k] = v
			}
			code, out, errOut := runCmd(t, env, append([]string{"loadtest"}, c.args...)...)
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			if code != exitUsage || len(lines) != 1 || !strings.Contains(errOut, c.mention) || out != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d and one line mentioning %q", code, out, errOut, exitUsage, c.mention)
			}
		})
	}
}
