package telemetry_test

import (
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/consentline/consentline/internal/telemetry"
)

// BenchmarkServeStack measures what serve's stack around the IVR's routes
// (Serve: request id, access log line, request metrics, recoverer, the
// root router) adds to each request, with a
// handler that answers a hold line as a webhook refused past capacity
// does. The log goes to /dev/null through a real write, as serve's goes
// to stdout. Reported: cpu-µs/op of the process (getrusage), for the
// handler bare, behind the stack, and behind the stack as a request shed
// past capacity (NoteShed: no access line).
//
//	go test ./internal/telemetry -run '^$' -bench ServeStack
func BenchmarkServeStack(b *testing.B) {
	hold := []byte(`<?xml version="1.0" encoding="UTF-8"?><Response><Say>Please hold.</Say><Pause length="1"/>` +
		`<Redirect method="POST">https://example.com/voice/resume?attempt=0&amp;lang=en-US&amp;t0=1800000000000</Redirect></Response>`)
	u, err := url.ParseRequestURI("/voice/gather")
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name          string
		stacked, shed bool
	}{{"bare", false, false}, {"stacked", true, false}, {"stacked+shed", true, true}} {
		b.Run(bc.name, func(b *testing.B) {
			devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer devnull.Close()
			log := slog.New(slog.NewJSONHandler(devnull, nil))
			m := telemetry.New()
			app := chi.NewRouter()
			app.Post("/voice/gather", func(w http.ResponseWriter, r *http.Request) {
				telemetry.NoteCallSID(r.Context(), "CA0123456789abcdef0123456789abcdef")
				if bc.shed {
					telemetry.NoteShed(r.Context())
				}
				w.Header().Set("Content-Type", "text/xml; charset=utf-8")
				_, _ = w.Write(hold)
			})
			var h http.Handler = app
			if bc.stacked {
				h = telemetry.Serve(app, log, m, "")
			}
			b.ReportAllocs()
			b.ResetTimer()
			before := processCPU(b)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r := &http.Request{Method: http.MethodPost, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
						Header: http.Header{}, Host: "example.com", RemoteAddr: "192.0.2.1:1234", RequestURI: "/voice/gather"}
					h.ServeHTTP(discard{http.Header{}}, r)
				}
			})
			b.ReportMetric(float64((processCPU(b)-before).Nanoseconds())/float64(b.N)/1000, "cpu-µs/op")
		})
	}
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// discard is a ResponseWriter that keeps nothing.
type discard struct{ h http.Header }

func (d discard) Header() http.Header       { return d.h }
func (discard) Write(p []byte) (int, error) { return len(p), nil }
func (discard) WriteHeader(int)             {}
