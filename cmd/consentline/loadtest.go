package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/consentline/consentline/consent/pgstore"
	"github.com/consentline/consentline/consent/sqlitestore"
	"github.com/consentline/consentline/internal/loadtest"
)

const loadtestUsage = `usage: consentline loadtest --target URL [--calls N] [--concurrency N] [--rate R]
                            [--streams] [--duplicates F] [--public-base-url URL]
                            [--database-url URL | --data-dir DIR] [--metrics-token T]
TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN: the instance's own, to sign the webhooks.
`

// loadtestCommand drives simulated calls against a running instance and
// prints what it measured; it fails when a call failed or the decisions
// recorded are not the ones the calls should have left.
func loadtestCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, loadtestUsage)
		fs.PrintDefaults()
	}
	target := fs.String("target", "", "the running instance's base URL, e.g. http://127.0.0.1:8080 (required)")
	publicBase := fs.String("public-base-url", "", "the instance's PUBLIC_BASE_URL, which signatures are computed on (default: --target)")
	calls := fs.Int("calls", 100, "calls in all")
	concurrency := fs.Int("concurrency", 10, "calls in flight at once")
	callRate := fs.Float64("rate", 0, "new calls per second (0: as fast as --concurrency allows)")
	streams := fs.Bool("streams", false, "play each call's media stream at real-time pace (about 7 s a call)")
	duplicates := fs.Float64("duplicates", 0.05, "fraction of final answers delivered twice at once, as Twilio retries a slow webhook")
	databaseURL := fs.String("database-url", "", "read the decisions back from this PostgreSQL database (the instance's DATABASE_URL)")
	dataDir := fs.String("data-dir", "", "read the decisions back from the embedded database in this directory (the instance's DATA_DIR)")
	metricsToken := fs.String("metrics-token", getenv("METRICS_TOKEN"), "the instance's METRICS_TOKEN, for /metrics (default: $METRICS_TOKEN)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return badSettings{errors.New("bad command line (see consentline loadtest -h)")}
	}
	if fs.NArg() > 0 {
		return badSettings{fmt.Errorf("unexpected argument %q (see consentline loadtest -h)", fs.Arg(0))}
	}
	cfg, err := loadtestConfig(*target, *publicBase, *calls, *concurrency, *callRate, *duplicates, *databaseURL, *dataDir, getenv)
	if err != nil {
		return badSettings{err}
	}
	cfg.Streams = *streams
	test, err := loadtest.New(cfg)
	if err != nil {
		return badSettings{err}
	}

	// How the decisions are read back, checked before any call is made: a
	// wrong database or a missing token fails now, not after the run.
	metricsClient := &http.Client{Timeout: 5 * time.Second}
	var count recordCounter
	var from string
	switch {
	case *databaseURL != "" || *dataDir != "":
		var closeDB func()
		count, from, closeDB, err = openRecordCounter(ctx, *databaseURL, *dataDir)
		if err != nil {
			return err
		}
		defer closeDB()
	}
	before, metricsErr := loadtest.ReadMetrics(ctx, metricsClient, cfg.Target, *metricsToken)
	if count == nil {
		switch {
		case errors.Is(metricsErr, loadtest.ErrMetricsUnauthorized):
			return badSettings{&settingError{"--metrics-token", "is required: the instance's METRICS_TOKEN (its /metrics answered 401), or read decisions from the database with --database-url / --data-dir"}}
		case metricsErr != nil:
			return fmt.Errorf("reading decisions from the instance's /metrics (or pass --database-url / --data-dir): %w", metricsErr)
		}
		from = "the instance's /metrics, consentline_decisions_total before and after (other traffic counts too)"
	}

	// The instance's memory, sampled while the calls run.
	var mem *loadtest.Memory
	var memMu sync.Mutex
	if metricsErr == nil && before.ResidentBytes > 0 {
		mem = &loadtest.Memory{IdleBytes: before.ResidentBytes, PeakBytes: before.ResidentBytes}
	}
	runCtx, stopSampling := context.WithCancel(ctx)
	var sampling sync.WaitGroup
	if mem != nil {
		sampling.Go(func() {
			tick := time.NewTicker(250 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-runCtx.Done():
					return
				case <-tick.C:
				}
				if s, err := loadtest.ReadMetrics(runCtx, metricsClient, cfg.Target, *metricsToken); err == nil {
					memMu.Lock()
					mem.PeakBytes = max(mem.PeakBytes, s.ResidentBytes)
					memMu.Unlock()
				}
			}
		})
	}
	sampling.Go(func() { showProgress(runCtx, stderr, test) })
	report := test.Run(ctx)
	stopSampling()
	sampling.Wait()
	if mem != nil {
		// A short run may end between two samples.
		if s, err := loadtest.ReadMetrics(ctx, metricsClient, cfg.Target, *metricsToken); err == nil {
			mem.PeakBytes = max(mem.PeakBytes, s.ResidentBytes)
		}
		report.Memory = mem
	}

	// Read the decisions back. Work behind a webhook answered with a hold
	// may commit a moment later, so a short wait is allowed for the count
	// to reach what is expected.
	readCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	var recorded map[string]int
	var readErr error
	for {
		if count != nil {
			recorded, readErr = count(readCtx, report.CleanCalls)
		} else {
			var after loadtest.Scrape
			if after, readErr = loadtest.ReadMetrics(readCtx, metricsClient, cfg.Target, *metricsToken); readErr == nil {
				recorded = after.Since(before)
			}
		}
		if readErr == nil && sameCounts(recorded, report.Expected) {
			break
		}
		select {
		case <-readCtx.Done():
		case <-time.After(250 * time.Millisecond):
			continue
		}
		break
	}
	if readErr == nil {
		report.Recorded, report.RecordedFrom = recorded, from
	}
	if _, err := report.WriteTo(stdout); err != nil {
		return err
	}
	if readErr != nil {
		return fmt.Errorf("reading the decisions back: %w", readErr)
	}
	return report.Problem()
}

// loadtestConfig checks the command line and the credentials, naming the
// first problem in one line.
func loadtestConfig(target, publicBase string, calls, concurrency int, callRate, duplicates float64, databaseURL, dataDir string, getenv func(string) string) (loadtest.Config, error) {
	target = strings.TrimRight(strings.TrimSpace(target), "/")
	if target == "" {
		return loadtest.Config{}, &settingError{"--target", "is required: the running instance's base URL, e.g. http://127.0.0.1:8080"}
	}
	if !isBaseURL(target) {
		return loadtest.Config{}, &settingError{"--target", "must be an absolute http(s) URL without path or query, e.g. http://127.0.0.1:8080"}
	}
	publicBase = strings.TrimRight(strings.TrimSpace(publicBase), "/")
	if publicBase == "" {
		publicBase = target
	}
	if u, err := url.Parse(publicBase); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" {
		return loadtest.Config{}, &settingError{"--public-base-url", "must be the instance's PUBLIC_BASE_URL, an absolute http(s) URL, e.g. https://consent.up.railway.app"}
	}
	cfg := loadtest.Config{Target: target, PublicBaseURL: publicBase, Calls: calls, Concurrency: concurrency, Rate: callRate, Duplicates: duplicates}
	switch {
	case calls < 1:
		return cfg, &settingError{"--calls", "must be at least 1"}
	case concurrency < 1:
		return cfg, &settingError{"--concurrency", "must be at least 1"}
	case !(callRate >= 0) || callRate > 1e6:
		return cfg, &settingError{"--rate", "must be new calls per second, e.g. 20, or 0 for as fast as --concurrency allows"}
	case !(duplicates >= 0 && duplicates <= 1):
		return cfg, &settingError{"--duplicates", "must be a fraction from 0 to 1, e.g. 0.05"}
	case databaseURL != "" && dataDir != "":
		return cfg, &settingError{"--database-url", "and --data-dir are exclusive: give the one the instance uses"}
	case databaseURL != "" && !strings.HasPrefix(databaseURL, "postgres://") && !strings.HasPrefix(databaseURL, "postgresql://"):
		return cfg, &settingError{"--database-url", "must be the instance's postgres:// DATABASE_URL"}
	}
	cfg.AccountSID = strings.TrimSpace(getenv("TWILIO_ACCOUNT_SID"))
	if !accountSIDPattern.MatchString(cfg.AccountSID) {
		return cfg, &settingError{"TWILIO_ACCOUNT_SID", "must be the instance's Twilio Account SID (AC followed by 32 hex characters): the webhooks carry it"}
	}
	cfg.AuthToken = strings.TrimSpace(getenv("TWILIO_AUTH_TOKEN"))
	if cfg.AuthToken == "" {
		return cfg, &settingError{"TWILIO_AUTH_TOKEN", "is required: the instance's Twilio Auth Token, which the webhooks are signed with"}
	}
	return cfg, nil
}

func isBaseURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && (u.Path == "" || u.Path == "/") && u.RawQuery == "" && u.Fragment == ""
}

func sameCounts(a, b map[string]int) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

// recordCounter counts the consent records of the given calls by decision.
type recordCounter func(ctx context.Context, callSIDs []string) (map[string]int, error)

// openRecordCounter opens the instance's database, without migrating it,
// and counts records through the store's own handle.
func openRecordCounter(ctx context.Context, databaseURL, dataDir string) (recordCounter, string, func(), error) {
	if databaseURL != "" {
		st, err := pgstore.Open(ctx, databaseURL, pgstore.Options{})
		if err != nil {
			return nil, "", nil, fmt.Errorf("--database-url: %w", err)
		}
		count := func(ctx context.Context, sids []string) (map[string]int, error) {
			rows, err := st.Pool().Query(ctx, `SELECT decision, count(*) FROM consent_records WHERE call_sid = ANY($1) GROUP BY decision`, sids)
			if err != nil {
				return nil, err
			}
			defer rows.Close()
			return scanCounts(rows)
		}
		return count, "consent_records in PostgreSQL, for the calls that finished without an error", func() { _ = st.Close() }, nil
	}
	// sqlitestore.Open would make an empty database where none is: a
	// mistyped --data-dir must fail instead.
	if _, err := os.Stat(filepath.Join(dataDir, sqlitestore.FileName)); err != nil {
		return nil, "", nil, badSettings{&settingError{"--data-dir", fmt.Sprintf("must be the instance's DATA_DIR: there is no %s in %s", sqlitestore.FileName, dataDir)}}
	}
	st, err := sqlitestore.Open(ctx, dataDir, sqlitestore.Options{})
	if err != nil {
		return nil, "", nil, fmt.Errorf("--data-dir: %w", err)
	}
	count := func(ctx context.Context, sids []string) (map[string]int, error) {
		list, err := json.Marshal(sids)
		if err != nil {
			return nil, err
		}
		rows, err := st.DB().QueryContext(ctx, `SELECT decision, count(*) FROM consent_records WHERE call_sid IN (SELECT value FROM json_each(?)) GROUP BY decision`, string(list))
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		return scanCounts(rows)
	}
	return count, "consent_records in the embedded database, for the calls that finished without an error", func() { _ = st.Close() }, nil
}

// scanCounts reads (decision, count) rows, from pgx or database/sql.
func scanCounts(rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}) (map[string]int, error) {
	out := map[string]int{}
	for rows.Next() {
		var d string
		var n int
		if err := rows.Scan(&d, &n); err != nil {
			return nil, err
		}
		out[d] = n
	}
	return out, rows.Err()
}

// showProgress draws a progress line on w until ctx ends: redrawn in place
// on a terminal, a plain line every 10 s otherwise (a log, CI).
func showProgress(ctx context.Context, w io.Writer, test *loadtest.Test) {
	tty := isTerminal(w)
	every := 10 * time.Second
	if tty {
		every = 250 * time.Millisecond
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintf(w, "\r%s\033[K\n", progressLine(test.Progress()))
			}
			return
		case <-tick.C:
		}
		if tty {
			fmt.Fprintf(w, "\r%s\033[K", progressLine(test.Progress()))
		} else {
			fmt.Fprintln(w, progressLine(test.Progress()))
		}
	}
}

func progressLine(p loadtest.Progress) string {
	const width = 24
	filled := 0
	if p.Calls > 0 {
		filled = p.Done * width / p.Calls
	}
	rate := 0.0
	if p.Elapsed > 0 {
		rate = float64(p.Done) / p.Elapsed.Seconds()
	}
	return fmt.Sprintf("[%s%s] %d/%d calls  %d in flight  %.1f calls/s  holds %d  errors %d  %s",
		strings.Repeat("#", filled), strings.Repeat(".", width-filled), p.Done, p.Calls, p.InFlight, rate, p.Holds, p.Errors, p.Elapsed.Truncate(time.Second))
}

// isTerminal reports whether w is a terminal (a character device), where
// a line redrawn with \r reads as a progress bar.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
