package ivr

import (
	"net/url"
	"strconv"
	"strings"
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

// query is the state as a callback URL's query: what url.Values.Encode
// writes for it (names in order, the language escaped), written directly,
// since every answer that names a callback URL builds one, including each
// hold a burst past capacity is answered with.
func (s flowState) query() string {
	b := make([]byte, 0, 64+len(s.Language))
	b = append(b, "attempt="...)
	b = strconv.AppendInt(b, int64(s.Attempt), 10)
	b = append(b, "&lang="...)
	b = append(b, url.QueryEscape(s.Language)...)
	if s.Stream {
		b = append(b, "&ms=1"...)
	}
	b = append(b, "&t0="...)
	b = strconv.AppendInt(b, s.Started.UnixMilli(), 10)
	return string(b)
}

// parseFlowState reads the state back from a callback's raw query. Missing
// or odd values fall back to a fresh state rather than failing the call:
// the patient must never hear an error. Each value is the first of its
// name, as url.ParseQuery and Get read it (TestParseFlowStateAgreesWithParseQuery),
// without building the map of every parameter.
func parseFlowState(rawQuery string, now time.Time) flowState {
	var lang, attempt, t0, ms string
	var seen [4]bool
	for rawQuery != "" {
		var pair string
		pair, rawQuery, _ = strings.Cut(rawQuery, "&")
		if pair == "" || strings.Contains(pair, ";") {
			continue // url.ParseQuery skips these too
		}
		name, value, _ := strings.Cut(pair, "=")
		name, err := url.QueryUnescape(name)
		if err != nil {
			continue
		}
		var i int
		var dst *string
		switch name {
		case "lang":
			i, dst = 0, &lang
		case "attempt":
			i, dst = 1, &attempt
		case "t0":
			i, dst = 2, &t0
		case "ms":
			i, dst = 3, &ms
		default:
			continue
		}
		if seen[i] {
			continue
		}
		if value, err = url.QueryUnescape(value); err != nil {
			continue
		}
		seen[i], *dst = true, value
	}
	s := flowState{Language: lang, Started: now}
	if n, err := strconv.Atoi(attempt); err == nil && n >= 0 {
		s.Attempt = n
	}
	if millis, err := strconv.ParseInt(t0, 10, 64); err == nil && millis > 0 {
		s.Started = time.UnixMilli(millis)
	}
	s.Stream = ms == "1"
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
