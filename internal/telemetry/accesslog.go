package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
)

// Access logs: one line per request, with what an operator needs to find a
// request and nothing a patient would mind: the method, the route pattern
// (never the raw URL: the query carries the call's flow state), the
// status, the duration, the request id and — for a webhook whose signature
// and parameter shapes were checked — the call SID. Never the form, the
// query, the From/To numbers or what the caller said.

// Serve is what serve's HTTP server serves: app's routes, with /metrics
// mounted beside them, behind a request id, the access log (which also
// times every request for the metrics) and the recoverer.
//
// They sit on a router of their own around app, rather than on it, so
// that everything mounted on app — now or later, the media stream's
// websocket included — is logged and timed the same way without the
// package that owns app knowing of it.
func Serve(app chi.Router, log *slog.Logger, m *Metrics, metricsToken string) http.Handler {
	if m != nil { // nil (a test without metrics): nothing to serve
		app.Method(http.MethodGet, PathMetrics, Handler(m, metricsToken, log))
	}
	root := chi.NewRouter()
	root.Use(RequestID, AccessLog(log, m), Recoverer(log))
	root.Mount("/", app)
	return root
}

// RequestID gives every request an id (chi's middleware.RequestID), made
// here: an X-Request-Id the client sent is dropped first, so nothing a
// caller controls reaches the log through it. The id is also sent back in
// the response's X-Request-Id.
func RequestID(next http.Handler) http.Handler {
	tag := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(middleware.RequestIDHeader, middleware.GetReqID(r.Context()))
		next.ServeHTTP(w, r)
	})
	withID := middleware.RequestID(tag)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del(middleware.RequestIDHeader)
		withID.ServeHTTP(w, r)
	})
}

// AccessLog logs one line per request at Info, except those a handler
// noted as shed (NoteShed), and records every request's duration in m
// (HTTPRequest). Mount it with Use on the chi router that routes the
// request (the route pattern is complete only once the router has matched
// it), after RequestID.
func AccessLog(log *slog.Logger, m *Metrics) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			n := &note{}
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			next.ServeHTTP(ww, r.WithContext(context.WithValue(r.Context(), noteKey{}, n)))
			took := time.Since(start)
			status := ww.Status()
			if status == 0 {
				status = http.StatusOK // nothing written: net/http answers 200
			}
			route := routePattern(r)
			m.HTTPRequest(route, status, took)
			if n.shed {
				return // counted above; summarized by the handler (NoteShed)
			}
			attrs := []slog.Attr{
				slog.String("method", r.Method),
				slog.String("route", route),
				slog.Int("status", status),
				slog.Float64("duration_ms", float64(took.Microseconds())/1000),
				slog.Int("bytes", ww.BytesWritten()),
				slog.String("request_id", middleware.GetReqID(r.Context())),
			}
			if n.callSID != "" {
				attrs = append(attrs, slog.String("call_sid", n.callSID))
			}
			log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
		})
	}
}

// unmatched is the route of a request no route matched: the raw path is
// not logged or used as a label (anyone can send any path).
const unmatched = "unmatched"

func routePattern(r *http.Request) string {
	rctx := chi.RouteContext(r.Context())
	if rctx == nil {
		return unmatched
	}
	p := rctx.RoutePattern()
	if p == "" || p == "/*" {
		return unmatched
	}
	return p
}

// note is what handlers tell the access log about their request.
type note struct {
	callSID string
	shed    bool
}

type noteKey struct{}

// NoteCallSID gives the request's access log line its call SID. Call it
// only with a SID whose request was signed by Twilio and whose shape was
// checked (CA + 32 hex): anything else may be whatever a sender chose to
// put there, a phone number included. Outside AccessLog it does nothing.
func NoteCallSID(ctx context.Context, sid string) {
	if n, ok := ctx.Value(noteKey{}).(*note); ok {
		n.callSID = sid
	}
}

// NoteShed tells the access log that the request was answered without
// its work because the instance was past its capacity (the caller heard
// the hold line), and that the handler logs such requests itself, counted
// together at most once a second. Its access line is left out; its
// duration and status are still recorded in the metrics. Past capacity an
// instance answers most webhooks this way, and a line for each would make
// a burst's cost grow with the burst: the line costs about as much as the
// refusal itself (BenchmarkServeStack).
func NoteShed(ctx context.Context) {
	if n, ok := ctx.Value(noteKey{}).(*note); ok {
		n.shed = true
	}
}

// Recoverer turns a panic in a handler into a 500 and one Error line with
// the route, the request id, the panic value's type and the stack — not
// the panic value itself, nor anything of the request, which may hold PHI.
// http.ErrAbortHandler passes through (net/http's way to abort quietly).
// Mount it inside AccessLog, so the access line shows the 500.
func Recoverer(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				v := recover()
				if v == nil {
					return
				}
				if v == http.ErrAbortHandler { //nolint:errorlint // the sentinel is panicked as is
					panic(v)
				}
				log.LogAttrs(r.Context(), slog.LevelError, "panic serving request",
					slog.String("route", routePattern(r)),
					slog.String("request_id", middleware.GetReqID(r.Context())),
					slog.String("panic_type", fmt.Sprintf("%T", v)),
					slog.String("stack", string(debug.Stack())))
				if ww, ok := w.(middleware.WrapResponseWriter); ok && ww.Status() != 0 {
					return // the answer had begun: nothing better to send
				}
				w.WriteHeader(http.StatusInternalServerError)
			}()
			next.ServeHTTP(w, r)
		})
	}
}
