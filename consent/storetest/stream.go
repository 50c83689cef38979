package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
)

// testStreamMeasurements: a measurement round-trips; the must-hear end,
// saved before or after the stream's measurement, survives the stream's
// later saves; a missing one is ErrNotFound; a malformed one is refused.
func testStreamMeasurements(t *testing.T, s consent.Store) {
	ctx := ctxT(t)
	sid := CallSID()
	if _, err := s.StreamMeasurement(ctx, sid, "hipaa"); !errors.Is(err, consent.ErrNotFound) {
		t.Fatalf("StreamMeasurement of nothing: %v, want ErrNotFound", err)
	}
	mustHear := time.Now().UTC().Truncate(time.Millisecond)
	// The must-hear redirect can reach an instance before the stream's
	// first save reaches another.
	if err := s.MustHearEnded(ctx, sid, "hipaa", mustHear); err != nil {
		t.Fatal(err)
	}
	m := consent.StreamMeasurement{CallSID: sid, ScriptID: "hipaa", StreamSID: "MZ" + sid[2:],
		StartedAt:     mustHear.Add(-12 * time.Second),
		PromptOnsetMS: 310, PromptEndMS: 9000, AnswerOnsetMS: 4210, AnswerEndMS: 5300, BargeIn: true,
		AnswerAudio: Sealed("audio")}
	if err := s.SaveStreamMeasurement(ctx, m); err != nil {
		t.Fatal(err)
	}
	m.AnswerOnsetMS, m.AnswerEndMS = 4220, 5400 // the stream saves again
	if err := s.SaveStreamMeasurement(ctx, m); err != nil {
		t.Fatal(err)
	}
	got, err := s.StreamMeasurement(ctx, sid, "hipaa")
	if err != nil {
		t.Fatal(err)
	}
	want := m
	want.MustHearEndedAt = mustHear
	if !got.StartedAt.Equal(want.StartedAt) || !got.MustHearEndedAt.Equal(want.MustHearEndedAt) {
		t.Fatalf("times: got started %v must-hear %v, want %v %v", got.StartedAt, got.MustHearEndedAt, want.StartedAt, want.MustHearEndedAt)
	}
	got.StartedAt, got.MustHearEndedAt, want.StartedAt, want.MustHearEndedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if got != want {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	// A later must-hear end (the disclosure played again) replaces it
	// without touching the stream's fields.
	if err := s.MustHearEnded(ctx, sid, "hipaa", mustHear.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.StreamMeasurement(ctx, sid, "hipaa"); err != nil || got.AnswerOnsetMS != 4220 || !got.MustHearEndedAt.Equal(mustHear.Add(time.Second)) {
		t.Fatalf("after a second must-hear end: %+v, %v", got, err)
	}
	// A second script of the same call is its own row.
	other := consent.StreamMeasurement{CallSID: sid, ScriptID: "hipaa-es", StartedAt: mustHear,
		PromptOnsetMS: 200, PromptEndMS: -1, AnswerOnsetMS: -1, AnswerEndMS: -1}
	if err := s.SaveStreamMeasurement(ctx, other); err != nil {
		t.Fatal(err)
	}
	all, err := s.StreamMeasurements(ctx, sid)
	if err != nil || len(all) != 2 || all[0].ScriptID != "hipaa" || all[1].ScriptID != "hipaa-es" {
		t.Fatalf("StreamMeasurements: %d rows, %v", len(all), err)
	}
	for name, bad := range map[string]consent.StreamMeasurement{
		"no call":       {ScriptID: "hipaa", StartedAt: mustHear},
		"no start":      {CallSID: sid, ScriptID: "x"},
		"negative time": {CallSID: sid, ScriptID: "x", StartedAt: mustHear, AnswerOnsetMS: -5},
		"audio not JWE": {CallSID: sid, ScriptID: "x", StartedAt: mustHear, AnswerAudio: "raw audio bytes"},
	} {
		if err := s.SaveStreamMeasurement(ctx, bad); err == nil {
			t.Errorf("%s: stored", name)
		}
	}
}
