package storetest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consentline/consentline/consent"
)

// memStore is the simplest correct consent.Store: running the suite against it
// checks the suite itself, apart from any database.
type memStore struct {
	mu      sync.Mutex
	recs    map[[2]string]consent.Record
	secrets map[string]consent.Sealed
	started map[string]consent.StartedCall
	streams map[[2]string]consent.StreamMeasurement
}

func newMemStore() *memStore {
	return &memStore{recs: map[[2]string]consent.Record{}, secrets: map[string]consent.Sealed{}, started: map[string]consent.StartedCall{},
		streams: map[[2]string]consent.StreamMeasurement{}}
}

func (m *memStore) SaveStreamMeasurement(ctx context.Context, sm consent.StreamMeasurement) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := sm.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{sm.CallSID, sm.ScriptID}
	sm.MustHearEndedAt = m.streams[k].MustHearEndedAt
	sm.StartedAt = sm.StartedAt.UTC()
	m.streams[k] = sm
	return nil
}

func (m *memStore) MustHearEnded(ctx context.Context, callSID, scriptID string, at time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{callSID, scriptID}
	sm, ok := m.streams[k]
	if !ok {
		sm = consent.StreamMeasurement{CallSID: callSID, ScriptID: scriptID, PromptOnsetMS: -1, PromptEndMS: -1, AnswerOnsetMS: -1, AnswerEndMS: -1}
	}
	sm.MustHearEndedAt = at.UTC()
	m.streams[k] = sm
	return nil
}

func (m *memStore) StreamMeasurement(ctx context.Context, callSID, scriptID string) (consent.StreamMeasurement, error) {
	if err := ctx.Err(); err != nil {
		return consent.StreamMeasurement{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	sm, ok := m.streams[[2]string{callSID, scriptID}]
	if !ok {
		return consent.StreamMeasurement{}, consent.ErrNotFound
	}
	return sm, nil
}

func (m *memStore) StreamMeasurements(ctx context.Context, callSID string) ([]consent.StreamMeasurement, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []consent.StreamMeasurement
	for k, sm := range m.streams {
		if k[0] == callSID {
			out = append(out, sm)
		}
	}
	slices.SortFunc(out, func(a, b consent.StreamMeasurement) int { return strings.Compare(a.ScriptID, b.ScriptID) })
	return out, nil
}

func (m *memStore) CallStarted(ctx context.Context, c consent.StartedCall) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.started[c.CallSID]; ok {
		old.Script = c.Script
		m.started[c.CallSID] = old
		return nil
	}
	c.StartedAt = c.StartedAt.UTC()
	m.started[c.CallSID] = c
	return nil
}

func (m *memStore) StartedCall(ctx context.Context, sid string) (consent.StartedCall, error) {
	if err := ctx.Err(); err != nil {
		return consent.StartedCall{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.started[sid]
	if !ok {
		return consent.StartedCall{}, consent.ErrNotFound
	}
	return c, nil
}

func (m *memStore) Unsettled(ctx context.Context, before time.Time, limit int) ([]consent.StartedCall, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	decided := map[string]bool{}
	for k := range m.recs {
		decided[k[0]] = true
	}
	var out []consent.StartedCall
	for _, c := range m.started {
		if c.StartedAt.Before(before) && !decided[c.CallSID] {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b consent.StartedCall) int { return a.StartedAt.Compare(b.StartedAt) })
	return out[:min(limit, len(out))], nil
}

func sealedShape(s consent.Sealed) bool {
	if s == "" {
		return true
	}
	parts := strings.Split(string(s), ".")
	if len(parts) != 5 {
		return false
	}
	for _, p := range parts {
		if strings.Trim(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			return false
		}
	}
	return true
}

func (m *memStore) Record(ctx context.Context, rec consent.Record) (consent.Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return consent.Record{}, false, err
	}
	switch {
	case rec.CallSID == "", rec.Script.ID == "", rec.DecidedAt.IsZero(), rec.DisclosureHeardMS < 0:
		return consent.Record{}, false, errors.New("invalid")
	case rec.Timing != consent.TimingMeasured && rec.Timing != consent.TimingEstimated:
		return consent.Record{}, false, errors.New("invalid timing")
	case rec.Decision != consent.Granted && rec.Decision != consent.Declined && rec.Decision != consent.NoResponse:
		return consent.Record{}, false, errors.New("invalid decision")
	case rec.Confidence != nil && !(*rec.Confidence >= 0 && *rec.Confidence <= 1):
		return consent.Record{}, false, errors.New("invalid confidence")
	case !sealedShape(rec.From) || !sealedShape(rec.To) || !sealedShape(rec.Transcript):
		return consent.Record{}, false, errors.New("not sealed")
	}
	if rec.ID == "" {
		rec.ID = NewID()
	}
	rec.DecidedAt = rec.DecidedAt.UTC().Truncate(time.Microsecond)
	if rec.Confidence != nil {
		c := *rec.Confidence
		rec.Confidence = &c
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	key := [2]string{rec.CallSID, rec.Script.ID}
	if old, ok := m.recs[key]; ok {
		return old, false, nil
	}
	m.recs[key] = rec
	return rec, true, nil
}

func (m *memStore) Get(ctx context.Context, callSID, scriptID string) (consent.Record, error) {
	if err := ctx.Err(); err != nil {
		return consent.Record{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.recs[[2]string{callSID, scriptID}]
	if !ok {
		return consent.Record{}, consent.ErrNotFound
	}
	return rec, nil
}

func (m *memStore) Secret(ctx context.Context, name string, generate func() (consent.Sealed, error)) (consent.Sealed, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.secrets[name]; ok {
		return v, nil
	}
	v, err := generate()
	if err != nil {
		return "", fmt.Errorf("generate: %w", err)
	}
	if !sealedShape(v) {
		return "", errors.New("not sealed")
	}
	m.secrets[name] = v
	return v, nil
}

// SealedRows and Reseal make memStore a consent.Resealer, keyed like the
// real stores: records by id, started calls by SID, secrets by name.
func (m *memStore) SealedRows(ctx context.Context, table, after string, limit int) ([]consent.SealedRow, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []consent.SealedRow
	switch table {
	case consent.TableConsentRecords:
		for _, r := range m.recs {
			out = append(out, consent.SealedRow{Key: r.ID, Place: consent.RecordBinding(r.CallSID, r.Script.ID, ""),
				Values: map[string]consent.Sealed{consent.FieldFrom: r.From, consent.FieldTo: r.To, consent.FieldTranscript: r.Transcript}})
		}
	case consent.TableStartedCalls:
		for _, c := range m.started {
			out = append(out, consent.SealedRow{Key: c.CallSID, Place: consent.StartedCallBinding(c.CallSID, ""),
				Values: map[string]consent.Sealed{consent.FieldFrom: c.From, consent.FieldTo: c.To}})
		}
	case consent.TableStreamMeasurements:
		for _, sm := range m.streams {
			place := consent.StreamBinding(sm.CallSID, sm.ScriptID)
			place.Field = ""
			out = append(out, consent.SealedRow{Key: sm.CallSID + "/" + sm.ScriptID, Place: place,
				Values: map[string]consent.Sealed{consent.FieldAnswerAudio: sm.AnswerAudio}})
		}
	case consent.TableSecrets:
		for name, v := range m.secrets {
			place := consent.SecretBinding(name)
			place.Field = ""
			out = append(out, consent.SealedRow{Key: name, Place: place, Values: map[string]consent.Sealed{consent.FieldSecretValue: v}})
		}
	default:
		return nil, fmt.Errorf("unknown table %q", table)
	}
	out = slices.DeleteFunc(out, func(r consent.SealedRow) bool { return r.Key <= after })
	slices.SortFunc(out, func(a, b consent.SealedRow) int { return strings.Compare(a.Key, b.Key) })
	return out[:min(limit, len(out))], nil
}

func (m *memStore) Reseal(ctx context.Context, table string, updates []consent.SealedUpdate) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := consent.CheckReseal(table, updates); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	cas := func(dst *consent.Sealed, u consent.SealedUpdate) {
		if *dst == u.Old {
			*dst = u.New
			n++
		}
	}
	for _, u := range updates {
		switch table {
		case consent.TableConsentRecords:
			for k, r := range m.recs {
				if r.ID != u.Key {
					continue
				}
				cas(map[string]*consent.Sealed{consent.FieldFrom: &r.From, consent.FieldTo: &r.To, consent.FieldTranscript: &r.Transcript}[u.Field], u)
				m.recs[k] = r
			}
		case consent.TableStartedCalls:
			if c, ok := m.started[u.Key]; ok {
				cas(map[string]*consent.Sealed{consent.FieldFrom: &c.From, consent.FieldTo: &c.To}[u.Field], u)
				m.started[u.Key] = c
			}
		case consent.TableStreamMeasurements:
			for k, sm := range m.streams {
				if k[0]+"/"+k[1] == u.Key {
					cas(&sm.AnswerAudio, u)
					m.streams[k] = sm
				}
			}
		case consent.TableSecrets:
			if v, ok := m.secrets[u.Key]; ok {
				cas(&v, u)
				m.secrets[u.Key] = v
			}
		}
	}
	return n, nil
}

func (m *memStore) Ping(ctx context.Context) error { return ctx.Err() }
func (m *memStore) Close() error                   { return nil }

func TestSuiteAgainstMemStore(t *testing.T) {
	Run(t, func(t *testing.T) consent.Store { return newMemStore() })
	t.Run("Resealer", func(t *testing.T) { RunResealer(t, func(t *testing.T) consent.Store { return newMemStore() }) })
}

func TestSealedHasJWEShape(t *testing.T) {
	if s := Sealed("x"); !sealedShape(s) || strings.Count(string(s), ".") != 4 {
		t.Fatalf("Sealed = %q, not a JWE compact string", s)
	}
}

func TestNewRecordIsValid(t *testing.T) {
	rec := NewRecord(CallSID(), "s")
	if rec.Confidence == nil || math.IsNaN(*rec.Confidence) || rec.DecidedAt.Location() == time.UTC {
		t.Fatalf("NewRecord should carry a confidence and a non-UTC time: %+v", rec)
	}
	if a, b := CallSID(), CallSID(); a == b || len(a) != 34 {
		t.Fatalf("CallSID: %q, %q", a, b)
	}
}
