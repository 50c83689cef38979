-- What a call's media stream measured of one disclosure script
-- (consent.StreamMeasurement): the stream's start (wall clock), the
-- disclosure's first and last speech on the outbound track, the caller's
-- latest answer on the inbound track (ms from the stream's start, -1 not
-- seen), whether it barged in, when the must-hear part ended (set by the
-- webhook that follows it, possibly before the stream saves anything), and
-- the answer's audio, sealed. id is the key rotation walks by.
CREATE TABLE stream_measurements (
    id                  TEXT    NOT NULL PRIMARY KEY,
    call_sid            TEXT    NOT NULL,
    script_id           TEXT    NOT NULL,
    stream_sid          TEXT    NOT NULL DEFAULT '',
    stream_started_at   TEXT,
    prompt_onset_ms     INTEGER NOT NULL DEFAULT -1,
    prompt_end_ms       INTEGER NOT NULL DEFAULT -1,
    answer_onset_ms     INTEGER NOT NULL DEFAULT -1,
    answer_end_ms       INTEGER NOT NULL DEFAULT -1,
    barge_in            INTEGER NOT NULL DEFAULT 0 CHECK (barge_in IN (0, 1)),
    must_hear_ended_at  TEXT,
    answer_audio_sealed TEXT    NOT NULL DEFAULT '',
    UNIQUE (call_sid, script_id)
) STRICT;
