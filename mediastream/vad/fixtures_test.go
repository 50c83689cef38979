package vad

import (
	"slices"
	"strings"
	"testing"

	"github.com/consentline/consentline/internal/audiofixtures"
)

// Acceptance bounds for the caller onset error (reported − true), ms.
const (
	maxMedianErrMS = 60
	maxErrMS       = 120
	minErrMS       = -40
	promptTolMS    = 60
)

// streamResult is everything a Detector confirmed over one stream.
type streamResult struct {
	callerOnsets, callerEnds   []int64
	promptOnsets, promptEnds   []int64
	firstPrompt, lastPromptEnd int64
	speakingAtOnset            []bool
}

// frameAt returns the 20 ms frame at byte offset i, nil past the end.
func frameAt(b []byte, i int) []byte {
	if i >= len(b) {
		return nil
	}
	return b[i:min(i+FrameBytes, len(b))]
}

// run pushes two aligned tracks (either may be nil) through a fresh
// Detector, then one second of silence so that pending ends are confirmed.
func run(in, out []byte) streamResult {
	d := New()
	var r streamResult
	n := max(len(in), len(out)) + SampleRate
	for i := 0; i < n; i += FrameBytes {
		ch := d.Push(frameAt(in, i), frameAt(out, i))
		if ch.CallerOnset {
			r.callerOnsets = append(r.callerOnsets, ch.CallerOnsetMS)
			r.speakingAtOnset = append(r.speakingAtOnset, ch.PromptSpeaking)
		}
		if ch.CallerEnd {
			r.callerEnds = append(r.callerEnds, ch.CallerEndMS)
		}
		if ch.PromptOnset {
			r.promptOnsets = append(r.promptOnsets, ch.PromptOnsetMS)
		}
		if ch.PromptEnd {
			r.promptEnds = append(r.promptEnds, ch.PromptEndMS)
		}
	}
	r.firstPrompt, r.lastPromptEnd = d.FirstPromptOnsetMS(), d.LastPromptEndMS()
	return r
}

// onsetStats summarises onset errors: median and the extremes.
func onsetStats(errs []int64) (median, lo, hi int64) {
	s := slices.Clone(errs)
	slices.Sort(s)
	return s[len(s)/2], s[0], s[len(s)-1]
}

// checkErrors applies the acceptance bounds to a set of onset errors.
func checkErrors(t *testing.T, what string, errs []int64) {
	t.Helper()
	if len(errs) == 0 {
		t.Fatalf("%s: no onsets measured", what)
	}
	med, lo, hi := onsetStats(errs)
	t.Logf("%s: %d onsets, error median %d ms, min %d ms, max %d ms", what, len(errs), med, lo, hi)
	if med > maxMedianErrMS || hi > maxErrMS || lo < minErrMS {
		t.Errorf("%s: onset error median %d / range [%d, %d] ms, want median ≤ %d and range within [%d, %d]",
			what, med, lo, hi, maxMedianErrMS, minErrMS, maxErrMS)
	}
}

// TestFixtures runs every clip and every call of audiofixtures and logs
// the onset error table.
func TestFixtures(t *testing.T) {
	clips, err := audiofixtures.Clips()
	if err != nil {
		t.Fatal(err)
	}
	calls, err := audiofixtures.Calls()
	if err != nil {
		t.Fatal(err)
	}
	var errs []int64
	var table strings.Builder
	table.WriteString("\nfixture                    true_ms  reported_ms  error_ms  notes\n")
	row := func(name string, truth, got int64, note string) {
		gotS, errS := "-", "-"
		if got >= 0 {
			gotS = itoa(got)
			if truth >= 0 {
				errS = itoa(got - truth)
			}
		}
		truthS := "-"
		if truth >= 0 {
			truthS = itoa(truth)
		}
		table.WriteString(pad(name, 27) + pad(truthS, 9) + pad(gotS, 13) + pad(errS, 10) + note + "\n")
	}
	for _, c := range clips {
		r := run(c.Audio, nil)
		first := int64(-1)
		if len(r.callerOnsets) > 0 {
			first = r.callerOnsets[0]
		}
		if !c.IsSpeech() {
			row(c.File, -1, first, "non-speech: no onset wanted")
			if len(r.callerOnsets) != 0 {
				t.Errorf("%s: onsets %v on non-speech", c.File, r.callerOnsets)
			}
			continue
		}
		row(c.File, c.OnsetMS, first, "")
		if first < 0 {
			t.Errorf("%s: no onset", c.File)
			continue
		}
		errs = append(errs, first-c.OnsetMS)
		if len(r.callerOnsets) != 1 {
			t.Errorf("%s: %d onsets %v, want one", c.File, len(r.callerOnsets), r.callerOnsets)
		}
	}
	for _, c := range calls {
		r := run(c.Inbound, c.Outbound)
		first := int64(-1)
		if len(r.callerOnsets) > 0 {
			first = r.callerOnsets[0]
		}
		note := "prompt onset " + itoa(r.firstPrompt) + " (true " + itoa(c.DisclosureOnsetMS) + "), last prompt end " + itoa(r.lastPromptEnd)
		row(c.Name, c.CallerOnsetMS, first, note)
		if d := r.firstPrompt - c.DisclosureOnsetMS; r.firstPrompt < 0 || d < -promptTolMS || d > promptTolMS {
			t.Errorf("%s: prompt onset %d, want %d ± %d", c.Name, r.firstPrompt, c.DisclosureOnsetMS, promptTolMS)
		}
		if c.CallerOnsetMS < 0 {
			if len(r.callerOnsets) != 0 {
				t.Errorf("%s: caller onsets %v, want none (echo/background only)", c.Name, r.callerOnsets)
			}
			continue
		}
		if first < 0 {
			t.Errorf("%s: no caller onset", c.Name)
			continue
		}
		if first < c.CallerOnsetMS+minErrMS {
			t.Errorf("%s: caller onset %d before the caller spoke (%d): echo or background taken for the caller", c.Name, first, c.CallerOnsetMS)
		}
		errs = append(errs, first-c.CallerOnsetMS)
		if bargeIn := first < r.lastPromptEnd; bargeIn != c.BargeIn {
			t.Errorf("%s: barge-in %v (onset %d, last prompt end %d), want %v", c.Name, bargeIn, first, r.lastPromptEnd, c.BargeIn)
		}
		if d := r.lastPromptEnd - c.DisclosureEndMS; d < -promptTolMS || d > promptTolMS {
			t.Errorf("%s: last prompt end %d, want %d ± %d", c.Name, r.lastPromptEnd, c.DisclosureEndMS, promptTolMS)
		}
	}
	t.Log(table.String())
	checkErrors(t, "fixtures", errs)
}

func itoa(v int64) string {
	if v < 0 {
		return "-" + itoa(-v)
	}
	if v < 10 {
		return string(rune('0' + v))
	}
	return itoa(v/10) + string(rune('0'+v%10))
}

func pad(s string, n int) string {
	for len(s) < n {
		s += " "
	}
	return s
}
