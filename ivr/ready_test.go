package ivr_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/consentline/consentline/ivr"
	"github.com/consentline/consentline/twiml"
)

// /readyz is public: its 503 names the backend that is down and nothing
// more; the error's detail (hosts, users, driver messages) goes to the log.
func TestReadyzNamesOnlyTheBackend(t *testing.T) {
	const detail = "dial tcp 10.0.0.7:5432: connect: connection refused (user=consentline)"
	for _, tc := range []struct {
		name string
		err  error
		body string
	}{
		{"postgres", ivr.NotReady{Backend: ivr.BackendPostgres, Err: errors.New(detail)}, "not ready: postgres\n"},
		{"redis", ivr.NotReady{Backend: ivr.BackendRedis, Err: errors.New(detail)}, "not ready: redis\n"},
		{"sqlite", ivr.NotReady{Backend: ivr.BackendSQLite, Err: errors.New(detail)}, "not ready: sqlite\n"},
		{"relay", ivr.NotReady{Backend: ivr.BackendRelay, Err: errors.New(detail)}, "not ready: relay\n"},
		{"wrapped", fmt.Errorf("checking: %w", ivr.NotReady{Backend: ivr.BackendRedis, Err: errors.New(detail)}), "not ready: redis\n"},
		{"unnamed", errors.New(detail), "not ready\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncBuffer
			srv := httptest.NewServer(ivr.New(ivr.Config{
				PublicBaseURL: publicBase, AuthToken: authToken, AccountSID: accountSID, Scripts: twiml.Builtin(),
				Ready:  func(context.Context) error { return tc.err },
				Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			}))
			defer srv.Close()
			resp, err := srv.Client().Get(srv.URL + "/readyz")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable || string(body) != tc.body {
				t.Errorf("/readyz = %d %q, want 503 %q", resp.StatusCode, body, tc.body)
			}
			if !strings.Contains(logs.String(), "connection refused") {
				t.Errorf("the detail is not in the log:\n%s", logs.String())
			}
		})
	}
}

// syncBuffer is a bytes.Buffer the server's goroutines may log into while
// the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
