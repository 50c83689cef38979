package ivr

import (
	"math/rand/v2"
	"net/url"
	"strconv"
	"testing"
	"time"
)

// query writes what url.Values.Encode writes for the state.
func TestFlowStateQueryIsEncode(t *testing.T) {
	for _, lang := range []string{"", "en-US", "es-US", "a b&c=d/é?", "%+;"} {
		for _, attempt := range []int{0, 1, 12} {
			for _, stream := range []bool{false, true} {
				st := flowState{Language: lang, Attempt: attempt, Started: time.UnixMilli(1800000000123), Stream: stream}
				q := url.Values{}
				q.Set("lang", st.Language)
				q.Set("attempt", strconv.Itoa(st.Attempt))
				q.Set("t0", strconv.FormatInt(st.Started.UnixMilli(), 10))
				if st.Stream {
					q.Set("ms", "1")
				}
				if got, want := st.query(), q.Encode(); got != want {
					t.Errorf("%+v: query %q, Encode %q", st, got, want)
				}
			}
		}
	}
}

// parseFlowState reads a raw query as url.ParseQuery and Get read it: the
// first well-formed value of each name.
func TestParseFlowStateAgreesWithParseQuery(t *testing.T) {
	now := time.UnixMilli(1700000000000)
	old := func(raw string) flowState {
		q, _ := url.ParseQuery(raw)
		s := flowState{Language: q.Get("lang"), Started: now}
		if n, err := strconv.Atoi(q.Get("attempt")); err == nil && n >= 0 {
			s.Attempt = n
		}
		if ms, err := strconv.ParseInt(q.Get("t0"), 10, 64); err == nil && ms > 0 {
			s.Started = time.UnixMilli(ms)
		}
		s.Stream = q.Get("ms") == "1"
		return s
	}
	pieces := []string{"lang", "attempt", "t0", "ms", "l%61ng", "=", "=", "&", "&", "1", "0", "-1", "es-US", "en+US", "%2", "%zz", ";", "1800000000000", "x"}
	rng := rand.New(rand.NewPCG(3, 4))
	raws := []string{"", "attempt=0&lang=en-US&t0=1800000000000", "lang=es-US&ms=1&attempt=2&t0=1800000000000", "lang=a&lang=b", "lang=%zz&lang=b", "lang;=a&lang=b"}
	raws = append(raws, joinedPieces(rng, pieces, 20000, 14)...)
	for _, raw := range raws {
		if got, want := parseFlowState(raw, now), old(raw); got != want {
			t.Fatalf("%q: %+v, url.ParseQuery's %+v", raw, got, want)
		}
	}
}
