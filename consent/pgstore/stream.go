package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/consentline/consentline/consent"
)

const streamColumns = `call_sid, script_id, stream_sid, stream_started_at, prompt_onset_ms, prompt_end_ms,
    answer_onset_ms, answer_end_ms, barge_in, must_hear_ended_at, answer_audio_sealed`

// SaveStreamMeasurement implements consent.Store.
func (s *Store) SaveStreamMeasurement(ctx context.Context, m consent.StreamMeasurement) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("pgstore: %w", err)
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO stream_measurements (id, `+streamColumns+`)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, $11)
ON CONFLICT (call_sid, script_id) DO UPDATE SET stream_sid = excluded.stream_sid,
    stream_started_at = excluded.stream_started_at, prompt_onset_ms = excluded.prompt_onset_ms,
    prompt_end_ms = excluded.prompt_end_ms, answer_onset_ms = excluded.answer_onset_ms,
    answer_end_ms = excluded.answer_end_ms, barge_in = excluded.barge_in,
    answer_audio_sealed = excluded.answer_audio_sealed`,
		uuid.NewString(), m.CallSID, m.ScriptID, m.StreamSID, m.StartedAt.UTC(), m.PromptOnsetMS, m.PromptEndMS,
		m.AnswerOnsetMS, m.AnswerEndMS, m.BargeIn, string(m.AnswerAudio))
	if err != nil {
		return fmt.Errorf("pgstore: stream measurement %s: %w", m.CallSID, ctxCause(ctx, err))
	}
	return nil
}

// MustHearEnded implements consent.Store.
func (s *Store) MustHearEnded(ctx context.Context, callSID, scriptID string, at time.Time) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO stream_measurements (id, call_sid, script_id, must_hear_ended_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (call_sid, script_id) DO UPDATE SET must_hear_ended_at = excluded.must_hear_ended_at`,
		uuid.NewString(), callSID, scriptID, at.UTC())
	if err != nil {
		return fmt.Errorf("pgstore: must-hear end %s: %w", callSID, ctxCause(ctx, err))
	}
	return nil
}

// StreamMeasurement implements consent.Store.
func (s *Store) StreamMeasurement(ctx context.Context, callSID, scriptID string) (consent.StreamMeasurement, error) {
	m, err := scanStream(s.pool.QueryRow(ctx, `SELECT `+streamColumns+`
FROM stream_measurements WHERE call_sid = $1 AND script_id = $2`, callSID, scriptID))
	if errors.Is(err, pgx.ErrNoRows) {
		return consent.StreamMeasurement{}, consent.ErrNotFound
	}
	if err != nil {
		return consent.StreamMeasurement{}, fmt.Errorf("pgstore: stream measurement %s: %w", callSID, ctxCause(ctx, err))
	}
	return m, nil
}

// StreamMeasurements implements consent.Store.
func (s *Store) StreamMeasurements(ctx context.Context, callSID string) ([]consent.StreamMeasurement, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+streamColumns+`
FROM stream_measurements WHERE call_sid = $1 ORDER BY script_id`, callSID)
	if err != nil {
		return nil, fmt.Errorf("pgstore: stream measurements %s: %w", callSID, ctxCause(ctx, err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (consent.StreamMeasurement, error) { return scanStream(row) })
	if err != nil {
		return nil, fmt.Errorf("pgstore: stream measurements %s: %w", callSID, ctxCause(ctx, err))
	}
	return out, nil
}

func scanStream(row pgx.Row) (consent.StreamMeasurement, error) {
	var m consent.StreamMeasurement
	var started, mustHear *time.Time
	var audio string
	err := row.Scan(&m.CallSID, &m.ScriptID, &m.StreamSID, &started, &m.PromptOnsetMS, &m.PromptEndMS,
		&m.AnswerOnsetMS, &m.AnswerEndMS, &m.BargeIn, &mustHear, &audio)
	if err != nil {
		return m, err
	}
	m.AnswerAudio = consent.Sealed(audio)
	if started != nil {
		m.StartedAt = started.UTC()
	}
	if mustHear != nil {
		m.MustHearEndedAt = mustHear.UTC()
	}
	return m, nil
}
