package main

import (
	stdlog "log"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/consentline/consentline/internal/telemetry"
	"github.com/consentline/consentline/ivr"
)

// httpHandler is what the HTTP server serves: the IVR's routes, with
// /metrics mounted beside them, behind a request id, the access log
// (which also times every request for the metrics) and the recoverer.
//
// They sit on a router of their own around the IVR's, rather than on the
// IVR's, so that everything mounted on app.Router() — now or later, the
// media stream's websocket included — is logged and timed the same way
// without the ivr package knowing of it.
func httpHandler(app *ivr.Server, log *slog.Logger, m *telemetry.Metrics, metricsToken string) http.Handler {
	app.Router().Method(http.MethodGet, telemetry.PathMetrics, telemetry.Handler(m, metricsToken, log))
	root := chi.NewRouter()
	root.Use(telemetry.RequestID, telemetry.AccessLog(log, m), telemetry.Recoverer(log))
	root.Mount("/", app.Router())
	return root
}

// httpErrorLog is the HTTP server's own error log (TLS handshakes,
// accept errors, a handler's misuse of its ResponseWriter) as slog lines,
// so everything serve logs is JSON.
func httpErrorLog(log *slog.Logger) *stdlog.Logger {
	return slog.NewLogLogger(log.Handler(), slog.LevelError)
}
