package consent_test

import (
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
)

func TestStreamMeasurementHeard(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	base := consent.StreamMeasurement{CallSID: "CA1", ScriptID: "hipaa", StartedAt: t0,
		PromptOnsetMS: 300, PromptEndMS: 12800, AnswerOnsetMS: -1, AnswerEndMS: -1}
	at := func(ms int64) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	for _, tc := range []struct {
		name         string
		edit         func(*consent.StreamMeasurement)
		gatherOpened bool
		want         consent.Heard
		ok           bool
	}{
		{name: "no answer yet", edit: func(m *consent.StreamMeasurement) {}, ok: false},
		{name: "no disclosure speech", edit: func(m *consent.StreamMeasurement) { m.PromptOnsetMS, m.AnswerOnsetMS = -1, 4200 }, ok: false},
		{name: "barge-in after the must-hear part", edit: func(m *consent.StreamMeasurement) {
			m.AnswerOnsetMS, m.BargeIn, m.MustHearEndedAt = 4200, true, at(3000)
		}, ok: true, want: consent.Heard{MS: 3900, BargeIn: true, MustHearComplete: true, Timing: consent.TimingMeasured}},
		{name: "talking over the must-hear part", edit: func(m *consent.StreamMeasurement) {
			m.AnswerOnsetMS, m.BargeIn, m.MustHearEndedAt = 2600, true, at(3000)
		}, gatherOpened: true, ok: true, want: consent.Heard{MS: 2300, BargeIn: true, Timing: consent.TimingMeasured}},
		{name: "after the disclosure: heard all of it, not the silence after", edit: func(m *consent.StreamMeasurement) {
			m.AnswerOnsetMS, m.MustHearEndedAt = 13500, at(3000)
		}, ok: true, want: consent.Heard{MS: 12500, MustHearComplete: true, Timing: consent.TimingMeasured}},
		{name: "must-hear end unseen, gather answer", edit: func(m *consent.StreamMeasurement) { m.AnswerOnsetMS, m.BargeIn = 5000, true },
			gatherOpened: true, ok: true, want: consent.Heard{MS: 4700, BargeIn: true, MustHearComplete: true, Timing: consent.TimingMeasured}},
		{name: "must-hear end unseen, stream answer", edit: func(m *consent.StreamMeasurement) { m.AnswerOnsetMS, m.BargeIn = 5000, true },
			ok: true, want: consent.Heard{MS: 4700, BargeIn: true, Timing: consent.TimingMeasured}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := base
			tc.edit(&m)
			got, ok := m.Heard(tc.gatherOpened)
			if ok != tc.ok || got != tc.want {
				t.Fatalf("Heard = %+v, %v; want %+v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestStreamMeasurementHeardWithoutAnswer(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	m := consent.StreamMeasurement{CallSID: "CA1", ScriptID: "hipaa", StartedAt: t0, PromptOnsetMS: -1, PromptEndMS: -1, AnswerOnsetMS: -1, AnswerEndMS: -1}
	if _, ok := m.HeardWithoutAnswer(); ok {
		t.Fatal("a stream that heard no disclosure measured how much was heard")
	}
	m.PromptOnsetMS = 300 // the disclosure began, its end not saved yet
	if h, ok := m.HeardWithoutAnswer(); ok {
		t.Fatalf("no disclosure end saved, yet measured %+v", h)
	}
	m.PromptEndMS = 2900 // hung up during the must-hear part
	if h, ok := m.HeardWithoutAnswer(); !ok || h != (consent.Heard{MS: 2600, Timing: consent.TimingMeasured}) {
		t.Fatalf("hung up early: %+v, %v", h, ok)
	}
	m.PromptEndMS, m.MustHearEndedAt = 12800, t0.Add(3*time.Second)
	if h, ok := m.HeardWithoutAnswer(); !ok || h != (consent.Heard{MS: 12500, MustHearComplete: true, Timing: consent.TimingMeasured}) {
		t.Fatalf("heard it all: %+v, %v", h, ok)
	}
}
