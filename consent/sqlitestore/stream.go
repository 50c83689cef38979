package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/consentline/consentline/consent"
)

const streamColumns = `call_sid, script_id, stream_sid, stream_started_at, prompt_onset_ms, prompt_end_ms,
    answer_onset_ms, answer_end_ms, barge_in, must_hear_ended_at, answer_audio_sealed`

// SaveStreamMeasurement implements consent.Store.
func (s *Store) SaveStreamMeasurement(ctx context.Context, m consent.StreamMeasurement) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("sqlitestore: %w", err)
	}
	_, err := s.write.ExecContext(ctx, `INSERT INTO stream_measurements (id, `+streamColumns+`)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)
ON CONFLICT (call_sid, script_id) DO UPDATE SET stream_sid = excluded.stream_sid,
    stream_started_at = excluded.stream_started_at, prompt_onset_ms = excluded.prompt_onset_ms,
    prompt_end_ms = excluded.prompt_end_ms, answer_onset_ms = excluded.answer_onset_ms,
    answer_end_ms = excluded.answer_end_ms, barge_in = excluded.barge_in,
    answer_audio_sealed = excluded.answer_audio_sealed`,
		uuid.NewString(), m.CallSID, m.ScriptID, m.StreamSID, formatTime(m.StartedAt), m.PromptOnsetMS, m.PromptEndMS,
		m.AnswerOnsetMS, m.AnswerEndMS, m.BargeIn, string(m.AnswerAudio))
	if err != nil {
		return fmt.Errorf("sqlitestore: stream measurement %s: %w", m.CallSID, ctxCause(ctx, err))
	}
	return nil
}

// MustHearEnded implements consent.Store.
func (s *Store) MustHearEnded(ctx context.Context, callSID, scriptID string, at time.Time) error {
	_, err := s.write.ExecContext(ctx, `INSERT INTO stream_measurements (id, call_sid, script_id, must_hear_ended_at)
VALUES (?, ?, ?, ?)
ON CONFLICT (call_sid, script_id) DO UPDATE SET must_hear_ended_at = excluded.must_hear_ended_at`,
		uuid.NewString(), callSID, scriptID, formatTime(at))
	if err != nil {
		return fmt.Errorf("sqlitestore: must-hear end %s: %w", callSID, ctxCause(ctx, err))
	}
	return nil
}

// StreamMeasurement implements consent.Store.
func (s *Store) StreamMeasurement(ctx context.Context, callSID, scriptID string) (consent.StreamMeasurement, error) {
	m, err := scanStream(s.read.QueryRowContext(ctx, `SELECT `+streamColumns+`
FROM stream_measurements WHERE call_sid = ? AND script_id = ?`, callSID, scriptID))
	if errors.Is(err, sql.ErrNoRows) {
		return consent.StreamMeasurement{}, consent.ErrNotFound
	}
	if err != nil {
		return consent.StreamMeasurement{}, fmt.Errorf("sqlitestore: stream measurement %s: %w", callSID, ctxCause(ctx, err))
	}
	return m, nil
}

// StreamMeasurements implements consent.Store.
func (s *Store) StreamMeasurements(ctx context.Context, callSID string) ([]consent.StreamMeasurement, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+streamColumns+`
FROM stream_measurements WHERE call_sid = ? ORDER BY script_id`, callSID)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: stream measurements %s: %w", callSID, ctxCause(ctx, err))
	}
	defer rows.Close()
	var out []consent.StreamMeasurement
	for rows.Next() {
		m, err := scanStream(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlitestore: stream measurements %s: %w", callSID, err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitestore: stream measurements %s: %w", callSID, ctxCause(ctx, err))
	}
	return out, nil
}

func scanStream(row interface{ Scan(...any) error }) (consent.StreamMeasurement, error) {
	var m consent.StreamMeasurement
	var started, mustHear sql.NullString
	var audio string
	err := row.Scan(&m.CallSID, &m.ScriptID, &m.StreamSID, &started, &m.PromptOnsetMS, &m.PromptEndMS,
		&m.AnswerOnsetMS, &m.AnswerEndMS, &m.BargeIn, &mustHear, &audio)
	if err != nil {
		return m, err
	}
	m.AnswerAudio = consent.Sealed(audio)
	if started.Valid {
		if m.StartedAt, err = parseTime(started.String); err != nil {
			return m, err
		}
	}
	if mustHear.Valid {
		if m.MustHearEndedAt, err = parseTime(mustHear.String); err != nil {
			return m, err
		}
	}
	return m, nil
}
