package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/consentline/consentline/ivr"
)

// serve's readiness check names the backend that does not answer, for
// /readyz to show and nothing else.
func TestReadyNamesTheBackend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Nothing listens on port 1: Redis is refused at once.
	b, err := openBackends(ctx, "", "redis://127.0.0.1:1/0", t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	var nr ivr.NotReady
	if err := b.ready(ctx); !errors.As(err, &nr) || nr.Backend != ivr.BackendRedis {
		t.Errorf("ready with Redis refused = %v, want NotReady naming redis", err)
	}

	_ = b.store.Close()
	if err := b.ready(ctx); !errors.As(err, &nr) || nr.Backend != ivr.BackendSQLite {
		t.Errorf("ready with the store closed = %v, want NotReady naming sqlite", err)
	}
}

// The HTTP server's own error log goes through slog: a JSON line at Error.
func TestHTTPErrorLogIsSlog(t *testing.T) {
	var buf bytes.Buffer
	httpErrorLog(slog.New(slog.NewJSONHandler(&buf, nil))).Printf("http: TLS handshake error from %s: EOF", "10.0.0.1:5555")
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil || line["level"] != "ERROR" || !strings.Contains(line["msg"].(string), "TLS handshake error") {
		t.Errorf("error log line = %q (%v)", buf.String(), err)
	}
}
