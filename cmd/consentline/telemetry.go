package main

import (
	stdlog "log"
	"log/slog"
)

// httpErrorLog is the HTTP server's own error log (TLS handshakes,
// accept errors, a handler's misuse of its ResponseWriter) as slog lines,
// so everything serve logs is JSON.
func httpErrorLog(log *slog.Logger) *stdlog.Logger {
	return slog.NewLogLogger(log.Handler(), slog.LevelError)
}
