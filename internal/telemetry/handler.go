package telemetry

import (
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// PathMetrics is where Handler is mounted (CONTRACT.md §1).
const PathMetrics = "/metrics"

// Handler serves m in Prometheus's exposition format. With a token
// (METRICS_TOKEN) it answers only requests carrying
// "Authorization: Bearer <token>", and 401 to any other; without one it is
// open, like /healthz. A collector that fails is logged and left out; the
// rest are still served.
func Handler(m *Metrics, token string, log *slog.Logger) http.Handler {
	h := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.reg, // promhttp_metric_handler_errors_total
	})
	if token == "" {
		return h
	}
	// Digests of equal length, compared in constant time: neither the
	// token's bytes nor its length show in the time a refusal takes.
	want := sha256.Sum256([]byte("Bearer " + token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := sha256.Sum256([]byte(r.Header.Get("Authorization")))
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			http.Error(w, "metrics need METRICS_TOKEN as a bearer token", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}
