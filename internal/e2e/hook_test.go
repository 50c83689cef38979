package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// catchHook is a local stand-in for a Zapier Catch Hook. It records every
// request it receives and answers each with what its policy says; a policy
// may block (hold the request), e.g. until the sender goes away.
type catchHook struct {
	*httptest.Server

	mu     sync.Mutex
	policy func(r *hookReq, req *http.Request) int
	reqs   []*hookReq
	// onArrive, when set (setOnArrive), is called (outside the lock) for
	// every request as soon as it is read, before the policy runs.
	onArrive func(r *hookReq)
}

// hookReq is one request the hook received.
type hookReq struct {
	At     time.Time // when its body had been read
	Header http.Header
	Body   []byte
	Event  struct {
		ID      string `json:"id"`
		Type    string `json:"type"`
		CallSID string `json:"call_sid"`
	}
	// Status is what the hook answered, 0 while it holds the request or if
	// the sender went away before the policy decided.
	Status int
}

// newCatchHook starts a hook that answers 200 until its policy is changed.
func newCatchHook(t testing.TB) *catchHook {
	h := &catchHook{policy: func(*hookReq, *http.Request) int { return http.StatusOK }}
	h.Server = httptest.NewServer(http.HandlerFunc(h.serve))
	t.Cleanup(h.Close)
	return h
}

// URL of the catch hook, shaped like Zapier's (the path is a credential).
func (h *catchHook) hookURL() string { return h.URL + "/hooks/catch/123456/abcdef/" }

func (h *catchHook) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return // the sender went away mid-body
	}
	r := &hookReq{At: time.Now(), Header: req.Header.Clone(), Body: body}
	_ = json.Unmarshal(body, &r.Event) // a malformed body shows up as an empty id
	h.mu.Lock()
	h.reqs = append(h.reqs, r)
	policy, onArrive := h.policy, h.onArrive
	h.mu.Unlock()
	if onArrive != nil {
		onArrive(r)
	}
	status := policy(r, req)
	if req.Context().Err() != nil {
		return // held until the sender gave up: nothing was answered
	}
	h.mu.Lock()
	r.Status = status
	h.mu.Unlock()
	w.WriteHeader(status)
}

func (h *catchHook) setOnArrive(f func(r *hookReq)) {
	h.mu.Lock()
	h.onArrive = f
	h.mu.Unlock()
}

func (h *catchHook) setPolicy(p func(r *hookReq, req *http.Request) int) {
	h.mu.Lock()
	h.policy = p
	h.mu.Unlock()
}

// requests returns a snapshot of every request received so far.
func (h *catchHook) requests() []hookReq {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]hookReq, len(h.reqs))
	for i, r := range h.reqs {
		out[i] = *r
	}
	return out
}

// delivered returns, per event id, the first request answered 2xx.
func (h *catchHook) delivered() map[string]hookReq {
	out := map[string]hookReq{}
	for _, r := range h.requests() {
		if _, seen := out[r.Event.ID]; !seen && r.Status >= 200 && r.Status < 300 {
			out[r.Event.ID] = r
		}
	}
	return out
}

// waitDelivered polls until every id has been answered 2xx, or fails the
// test after timeout naming how many are missing.
func (h *catchHook) waitDelivered(t testing.TB, ids []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := h.delivered()
		missing := 0
		for _, id := range ids {
			if _, ok := got[id]; !ok {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events not delivered within %s (%d requests seen)", missing, len(ids), timeout, len(h.requests()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
