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
}

func newMemStore() *memStore {
	return &memStore{recs: map[[2]string]consent.Record{}, secrets: map[string]consent.Sealed{}, started: map[string]consent.StartedCall{}}
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

func (m *memStore) Ping(ctx context.Context) error { return ctx.Err() }
func (m *memStore) Close() error                   { return nil }

func TestSuiteAgainstMemStore(t *testing.T) {
	Run(t, func(t *testing.T) consent.Store { return newMemStore() })
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
