package ivr

import (
	"net/url"
	"strconv"
	"time"

	"github.com/consentline/consentline/consent"
	"github.com/consentline/consentline/twiml"
)

// flowState is where a call is in the consent conversation. It travels in
// the query of the callback URLs the TwiML names, so any instance can answer
// any callback without shared session state; Twilio signs the full URL, so
// a caller cannot alter it.
type flowState struct {
	Language string
	// Attempt is 0 while the disclosure's own question is open, then the
	// number of the re-prompt being answered.
	Attempt int
	// Started is when the disclosure TwiML was served: the reference for how
	// much of it the caller had heard when they answered.
	Started time.Time
	// Stream is true when the disclosure started a media stream, whose
	// measurement then replaces the estimate.
	Stream bool
}

func (s flowState) query() string {
	q := url.Values{}
	q.Set("lang", s.Language)
	q.Set("attempt", strconv.Itoa(s.Attempt))
	q.Set("t0", strconv.FormatInt(s.Started.UnixMilli(), 10))
	if s.Stream {
		q.Set("ms", "1")
	}
	return q.Encode()
}

// parseFlowState reads the state back from a callback's query. Missing or
// odd values fall back to a fresh state rather than failing the call: the
// patient must never hear an error.
func parseFlowState(q url.Values, now time.Time) flowState {
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

// heard estimates how much of the disclosure had played when the caller
// answered at now, and whether they interrupted it. Twilio does not report
// the barge-in point for <Gather>; until the media stream measures it, the
// estimate is elapsed time against the script's estimated speaking time.
// Re-prompts come after the whole disclosure. The result is labelled
// estimated.
//
// MustHearComplete needs no estimate for a Gather's answer: the must-hear
// part is spoken before the <Gather> opens, outside it, so Twilio takes no
// answer until it has finished.
func (s flowState) heard(script *twiml.Script, now time.Time) consent.Heard {
	h := consent.Heard{Timing: consent.TimingEstimated, MustHearComplete: true}
	total := script.MustHearMS() + script.InterruptibleMS()
	h.MS = total
	if s.Attempt > 0 {
		return h
	}
	elapsed := max(now.Sub(s.Started).Milliseconds(), 0)
	if elapsed < total {
		h.MS, h.BargeIn = elapsed, true
	}
	return h
}
